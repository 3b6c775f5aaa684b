# Runs one consumer build: cmake -DMODE=find_package|add_subdirectory -DSOURCE_DIR=...
#   -DBUILD_DIR=... -DWORK_DIR=... -DCXX=... [-DCXX_FLAGS=...] [-DLINKER_FLAGS=...]
#   [-DCOMPONENTS="sqlite postgres"] -P run.cmake
# find_package: installs BUILD_DIR into a prefix and uses it with CMake (the components as
# found, and asked for) and with pkg-config.
cmake_minimum_required(VERSION 3.25)
include(${CMAKE_CURRENT_LIST_DIR}/functions.cmake)
file(REMOVE_RECURSE ${WORK_DIR})

if(MODE STREQUAL "add_subdirectory")
    execute_process(
        COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/consumer -B ${WORK_DIR}/build -G Ninja
            -DCMAKE_CXX_COMPILER=${CXX} -DCMAKE_BUILD_TYPE=Release
            "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}" "-DCMAKE_EXE_LINKER_FLAGS=${LINKER_FLAGS}"
            -DCTXMGR_CONSUMER_MODE=add_subdirectory -DCTXMGR_SOURCE_DIR=${SOURCE_DIR}
        COMMAND_ERROR_IS_FATAL ANY)
    execute_process(COMMAND ${CMAKE_COMMAND} --build ${WORK_DIR}/build
        COMMAND_ERROR_IS_FATAL ANY)
    consumer_run("consumer" ${WORK_DIR}/build/consumer)
    file(REMOVE_RECURSE ${WORK_DIR})
    return()
endif()

execute_process(
    COMMAND ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${WORK_DIR}/prefix
    COMMAND_ERROR_IS_FATAL ANY OUTPUT_QUIET)
set(ENV{CMAKE_PREFIX_PATH} ${WORK_DIR}/prefix)
# Every component this build has (COMPONENTS, separated by spaces), loaded without being
# asked for.
separate_arguments(built UNIX_COMMAND "${COMPONENTS}")
consumer_project(all BUILD EXPECT_COMPONENTS "${built}")
# ctxmgr::ctxmgr alone, on a machine without SQLite's and libpq's development files: the
# components that need neither (async, on Asio's headers) still load.
set(without_databases ${built})
list(REMOVE_ITEM without_databases sqlite postgres async_postgres)
consumer_project(without_databases WITHOUT SQLite3 PostgreSQL
    EXPECT_COMPONENTS "${without_databases}")
# A component asked for and missing says what it needs (this build's libraries are static,
# so using the component needs libpq's).
if(postgres IN_LIST built)
    consumer_project(postgres_without_libpq COMPONENTS postgres WITHOUT PostgreSQL
        EXPECT_FAILURE "ctxmgr component postgres links libpq \\(Debian: libpq-dev\\)")
endif()
consumer_project(unknown_component COMPONENTS sqlite nosuch
    EXPECT_FAILURE "ctxmgr has no component nosuch \\(its components: sqlite, postgres")

# The installed tree also serves pkg-config users.
file(GLOB_RECURSE pc_files ${WORK_DIR}/prefix/ctxmgr.pc)
get_filename_component(pc_dir "${pc_files}" DIRECTORY)
set(ENV{PKG_CONFIG_PATH} ${pc_dir})
pkg_config_program(ctxmgr main.cpp consumer-pkg-config)
if(sqlite IN_LIST built)
    pkg_config_program(ctxmgr-sqlite sqlite.cpp consumer-sqlite-pkg-config)
endif()
file(REMOVE_RECURSE ${WORK_DIR})
