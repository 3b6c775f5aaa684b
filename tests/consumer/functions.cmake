# Helpers of run.cmake and package.cmake, which set WORK_DIR, SOURCE_DIR, CXX, CXX_FLAGS and
# LINKER_FLAGS.

# consumer_run(<what> <command...>): runs a program; fails unless it exits 0 and prints
# "<name>: ok".
function(consumer_run what)
    execute_process(COMMAND ${ARGN} RESULT_VARIABLE status OUTPUT_VARIABLE output
        ERROR_VARIABLE output)
    if(NOT status EQUAL 0 OR NOT output MATCHES ": ok")
        message(FATAL_ERROR "${what} failed (${status}): ${output}")
    endif()
    message(STATUS "${what}: ok")
endfunction()

# consumer_project(<name> [BUILD] [COMPONENTS <c...>] [WITHOUT <package...>]
#                  [EXPECT_COMPONENTS <regex>] [EXPECT_FAILURE <regex>] [ARGS <arg...>])
#   Configures tests/consumer in WORK_DIR/<name> with find_package(ctxmgr) (COMPONENTS: the
#   components asked for; WITHOUT: packages the consumer's find_package must not find, as on
#   a machine where they are not installed), then builds it (BUILD: which runs the component
#   programs) and runs `consumer`. EXPECT_FAILURE: the configuration must fail and print the
#   regex instead. EXPECT_COMPONENTS: the components the package must have loaded.
function(consumer_project name)
    cmake_parse_arguments(PARSE_ARGV 1 arg "BUILD" "EXPECT_COMPONENTS;EXPECT_FAILURE"
        "COMPONENTS;WITHOUT;ARGS")
    set(args -DCTXMGR_CONSUMER_MODE=find_package)
    foreach(package IN LISTS arg_WITHOUT)
        list(APPEND args -DCMAKE_DISABLE_FIND_PACKAGE_${package}=ON)
    endforeach()
    string(JOIN " " components ${arg_COMPONENTS})
    execute_process(
        COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/consumer -B ${WORK_DIR}/${name} -G Ninja
            -DCMAKE_CXX_COMPILER=${CXX} -DCMAKE_BUILD_TYPE=Release
            "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}" "-DCMAKE_EXE_LINKER_FLAGS=${LINKER_FLAGS}"
            "-DCTXMGR_CONSUMER_COMPONENTS=${components}" ${args} ${arg_ARGS}
        RESULT_VARIABLE status OUTPUT_VARIABLE output ERROR_VARIABLE output)
    if(arg_EXPECT_FAILURE)
        # CMake wraps the reason at 80 columns.
        string(REGEX REPLACE "[ \n]+" " " flat "${output}")
        if(status EQUAL 0 OR NOT flat MATCHES "${arg_EXPECT_FAILURE}")
            message(FATAL_ERROR "consumer ${name}: expected the configuration to fail with "
                "'${arg_EXPECT_FAILURE}':\n${output}")
        endif()
        message(STATUS "consumer ${name}: fails as expected")
        return()
    endif()
    if(NOT status EQUAL 0)
        message(FATAL_ERROR "consumer ${name}: configuration failed:\n${output}")
    endif()
    if(NOT output MATCHES "components: ${arg_EXPECT_COMPONENTS}\n")
        message(FATAL_ERROR "consumer ${name}: expected the components "
            "'${arg_EXPECT_COMPONENTS}':\n${output}")
    endif()
    if(arg_BUILD)
        execute_process(COMMAND ${CMAKE_COMMAND} --build ${WORK_DIR}/${name}
            RESULT_VARIABLE status OUTPUT_VARIABLE output ERROR_VARIABLE output)
        if(NOT status EQUAL 0)
            message(FATAL_ERROR "consumer ${name}: the build failed:\n${output}")
        endif()
        consumer_run("consumer ${name}" ${WORK_DIR}/${name}/consumer)
    else()
        message(STATUS "consumer ${name}: configured")
    endif()
endfunction()

# pkg_config_program(<module> <source> <output> [STATIC]): compiles and links
# tests/consumer/<source> with the flags of `pkg-config <module>` (PKG_CONFIG_PATH set by the
# caller), and runs it. STATIC: with `pkg-config --static`, linking ctxmgr's static archives
# (-l:libctxmgr.a), and the program must not need any ctxmgr shared library.
function(pkg_config_program module source output)
    cmake_parse_arguments(PARSE_ARGV 3 arg "STATIC" "" "")
    find_program(PKG_CONFIG pkg-config REQUIRED)
    set(static)
    if(arg_STATIC)
        set(static --static)
    endif()
    execute_process(COMMAND ${PKG_CONFIG} ${static} --cflags --libs ${module}
        OUTPUT_VARIABLE flags OUTPUT_STRIP_TRAILING_WHITESPACE COMMAND_ERROR_IS_FATAL ANY)
    if(flags MATCHES "-std=")
        message(FATAL_ERROR "pkg-config ${module} forces a language standard: ${flags}")
    endif()
    separate_arguments(flags UNIX_COMMAND "${flags}")
    if(arg_STATIC)
        list(TRANSFORM flags REPLACE "^-l(ctxmgr[a-z_]*)$" "-l:lib\\1.a")
    endif()
    separate_arguments(extra_flags UNIX_COMMAND "${CXX_FLAGS} ${LINKER_FLAGS}")
    execute_process(
        COMMAND ${CXX} -std=c++20 ${extra_flags} ${SOURCE_DIR}/tests/consumer/${source}
            ${flags} -o ${WORK_DIR}/${output}
        COMMAND_ERROR_IS_FATAL ANY)
    if(arg_STATIC)
        execute_process(COMMAND readelf -d ${WORK_DIR}/${output}
            OUTPUT_VARIABLE dynamic COMMAND_ERROR_IS_FATAL ANY)
        if(dynamic MATCHES "libctxmgr")
            message(FATAL_ERROR "${output}, linked with --static flags, needs a ctxmgr shared "
                "library:\n${dynamic}")
        endif()
    endif()
    consumer_run("pkg-config ${static} ${module}" ${WORK_DIR}/${output})
endfunction()
