# ctxmgr::postgres: PostgreSQL connections (include <ctxmgr/postgres.hpp>), linking libpq.
# Built when find_package(PostgreSQL) succeeds; ctxmgrConfig.cmake then finds it again for
# the consumers of the installed target.
# GLOBAL: the tests and benchmarks call libpq directly too.
find_package(PostgreSQL GLOBAL)
if(NOT PostgreSQL_FOUND)
    message(STATUS "ctxmgr: libpq not found, ctxmgr::postgres not built")
    return()
endif()
# With it, what the pool and the distributed locks need of libpq (pool.hpp's check of an idle
# session, distributed_lock.hpp).
add_library(ctxmgr_postgres db/postgres.cpp pool/postgres_pool.cpp pool/distributed_lock.cpp)
add_library(ctxmgr::postgres ALIAS ctxmgr_postgres)
set_target_properties(ctxmgr_postgres PROPERTIES
    EXPORT_NAME postgres
    OUTPUT_NAME ctxmgr_postgres
    POSITION_INDEPENDENT_CODE ON)
target_link_libraries(ctxmgr_postgres PUBLIC ctxmgr_ctxmgr PRIVATE PostgreSQL::PostgreSQL)
target_include_directories(ctxmgr_postgres PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
ctxmgr_warnings(ctxmgr_postgres)
list(APPEND CTXMGR_EXPORTED_TARGETS ctxmgr_postgres)
set(CTXMGR_HAS_POSTGRES ON)
