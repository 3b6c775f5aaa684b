# ctxmgr::sqlite: SQLite connections (include <ctxmgr/sqlite.hpp>), linking SQLite's C
# library. Built when find_package(SQLite3) succeeds; ctxmgrConfig.cmake then finds it again
# for the consumers of the installed target.
# GLOBAL: the tests and benchmarks call the C library directly too.
find_package(SQLite3 GLOBAL)
if(NOT SQLite3_FOUND)
    message(STATUS "ctxmgr: SQLite3 not found, ctxmgr::sqlite not built")
    return()
endif()
add_library(ctxmgr_sqlite db/sqlite.cpp)
add_library(ctxmgr::sqlite ALIAS ctxmgr_sqlite)
set_target_properties(ctxmgr_sqlite PROPERTIES
    EXPORT_NAME sqlite
    OUTPUT_NAME ctxmgr_sqlite
    POSITION_INDEPENDENT_CODE ON)
target_link_libraries(ctxmgr_sqlite PUBLIC ctxmgr_ctxmgr PRIVATE SQLite::SQLite3)
target_include_directories(ctxmgr_sqlite PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
ctxmgr_warnings(ctxmgr_sqlite)
list(APPEND CTXMGR_EXPORTED_TARGETS ctxmgr_sqlite)
set(CTXMGR_HAS_SQLITE ON)
