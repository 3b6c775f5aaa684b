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
file(REMOVE_RECURSE ${WORK_DIR})
