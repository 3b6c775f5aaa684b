# ctxmgr::postgres: PostgreSQL connections (include <ctxmgr/postgres.hpp>), linking libpq,
# and with them what the pool and the distributed locks need of libpq (pool.hpp's check of an
# idle session, distributed_lock.hpp). Built when find_package(PostgreSQL) succeeds.
# GLOBAL: the tests and benchmarks call libpq directly too.
find_package(PostgreSQL GLOBAL)
if(NOT PostgreSQL_FOUND)
    message(STATUS "ctxmgr: libpq not found, ctxmgr::postgres not built")
    return()
endif()
ctxmgr_compiled_library(postgres SOURCES
    db/postgres.cpp
    db/redact_secrets.cpp
    pool/distributed_lock.cpp)
target_link_libraries(ctxmgr_postgres PUBLIC ctxmgr_ctxmgr PRIVATE PostgreSQL::PostgreSQL)

# ctxmgr::async_postgres: PostgreSQL connections for Asio coroutines (include
# <ctxmgr/async_postgres.hpp>), on ctxmgr::postgres and ctxmgr::async. Built when Asio is found.
if(TARGET ctxmgr_async)
    ctxmgr_compiled_library(async_postgres SOURCES db/async_postgres.cpp
        pool/async_distributed_lock.cpp)
    target_link_libraries(ctxmgr_async_postgres PUBLIC ctxmgr_postgres ctxmgr_async
        PRIVATE PostgreSQL::PostgreSQL)
    ctxmgr_asio_warnings(ctxmgr_async_postgres)
endif()
