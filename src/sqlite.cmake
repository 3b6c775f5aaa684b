# ctxmgr::sqlite: SQLite connections (include <ctxmgr/sqlite.hpp>), linking SQLite's C
# library. Built when find_package(SQLite3) succeeds.
# GLOBAL: the tests and benchmarks call the C library directly too.
find_package(SQLite3 GLOBAL)
if(NOT SQLite3_FOUND)
    message(STATUS "ctxmgr: SQLite3 not found, ctxmgr::sqlite not built")
    return()
endif()
ctxmgr_compiled_library(sqlite SOURCES db/sqlite.cpp)
target_link_libraries(ctxmgr_sqlite PUBLIC ctxmgr_ctxmgr PRIVATE SQLite::SQLite3)
