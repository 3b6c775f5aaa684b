# Runs one consumer build: cmake -DMODE=find_package|add_subdirectory -DSOURCE_DIR=...
#   -DBUILD_DIR=... -DWORK_DIR=... -DCXX=... [-DCXX_FLAGS=...] -P run.cmake
file(REMOVE_RECURSE ${WORK_DIR})
set(extra)
if(MODE STREQUAL "find_package")
    execute_process(
        COMMAND ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${WORK_DIR}/prefix
        COMMAND_ERROR_IS_FATAL ANY OUTPUT_QUIET)
    list(APPEND extra -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix)
else()
    list(APPEND extra -DCTXMGR_SOURCE_DIR=${SOURCE_DIR})
endif()
execute_process(
    COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/consumer -B ${WORK_DIR}/build -G Ninja
        -DCMAKE_CXX_COMPILER=${CXX} -DCMAKE_BUILD_TYPE=Release
        "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}" "-DCMAKE_EXE_LINKER_FLAGS=${LINKER_FLAGS}"
        -DCTXMGR_CONSUMER_MODE=${MODE} ${extra}
    COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ${CMAKE_COMMAND} --build ${WORK_DIR}/build COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ${WORK_DIR}/build/consumer
    RESULT_VARIABLE status OUTPUT_VARIABLE output ERROR_VARIABLE output)
message("${output}")
if(NOT status EQUAL 0)
    message(FATAL_ERROR "the consumer program failed (${status})")
endif()
if(NOT output MATCHES "consumer: ok")
    message(FATAL_ERROR "the consumer program did not report success")
endif()
# The installed tree also serves pkg-config users: build the same program with its flags.
if(MODE STREQUAL "find_package")
    find_program(PKG_CONFIG pkg-config REQUIRED)
    set(ENV{PKG_CONFIG_PATH} ${WORK_DIR}/prefix/lib/pkgconfig)
    execute_process(COMMAND ${PKG_CONFIG} --cflags --libs ctxmgr
        OUTPUT_VARIABLE pc_flags OUTPUT_STRIP_TRAILING_WHITESPACE COMMAND_ERROR_IS_FATAL ANY)
    separate_arguments(pc_flags UNIX_COMMAND "${pc_flags}")
    separate_arguments(extra_flags UNIX_COMMAND "${CXX_FLAGS} ${LINKER_FLAGS}")
    set(definitions)
    if(pc_flags MATCHES "-lctxmgr")
        set(definitions -DCTXMGR_CONSUMER_COMPILED=1)
    endif()
    execute_process(
        COMMAND ${CXX} ${extra_flags} ${definitions} ${SOURCE_DIR}/tests/consumer/main.cpp
            ${pc_flags} -o ${WORK_DIR}/consumer-pkg-config
        COMMAND_ERROR_IS_FATAL ANY)
    execute_process(COMMAND ${WORK_DIR}/consumer-pkg-config
        RESULT_VARIABLE status OUTPUT_VARIABLE output ERROR_VARIABLE output)
    if(NOT status EQUAL 0 OR NOT output MATCHES "consumer: ok")
        message(FATAL_ERROR "the program built with pkg-config failed: ${output}")
    endif()
endif()
file(REMOVE_RECURSE ${WORK_DIR})
