# The Debian packages, as a user gets them: configures and builds SOURCE_DIR like the release
# preset (shared libraries and static archives, prefix /usr, no tests) in WORK_DIR/build, runs
# `cpack -G DEB`, checks the packages' control fields and contents, unpacks both with dpkg -x
# into WORK_DIR/root, and builds and runs the consumers against that root with find_package
# (CMake) and with pkg-config (shared, and static with --static).
#   cmake -DSOURCE_DIR=... -DWORK_DIR=... -DCXX=... -DBUILD_TYPE=... [-DLAUNCHER=ccache]
#         [-DCXX_FLAGS=...] [-DLINKER_FLAGS=...] [-DOPTIONS=<-D options of the build>]
#         -P package.cmake
# WORK_DIR/build is kept between runs (a rerun rebuilds only what changed).
cmake_minimum_required(VERSION 3.25)
include(${CMAKE_CURRENT_LIST_DIR}/functions.cmake)
file(REMOVE_RECURSE ${WORK_DIR}/root ${WORK_DIR}/packages ${WORK_DIR}/find_package)

separate_arguments(options UNIX_COMMAND "${OPTIONS}")
if(LAUNCHER)
    list(APPEND options -DCMAKE_CXX_COMPILER_LAUNCHER=${LAUNCHER})
endif()
execute_process(
    COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${WORK_DIR}/build -G Ninja
        -DCMAKE_CXX_COMPILER=${CXX}
        -DCMAKE_BUILD_TYPE=${BUILD_TYPE} "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}"
        "-DCMAKE_SHARED_LINKER_FLAGS=${LINKER_FLAGS}"
        -DBUILD_SHARED_LIBS=ON -DCTXMGR_STATIC_ARCHIVES=ON -DCMAKE_INSTALL_PREFIX=/usr
        -DCTXMGR_BUILD_TESTS=OFF -DCTXMGR_BUILD_BENCH=OFF -DCTXMGR_BUILD_EXAMPLES=OFF
        -DCTXMGR_INSTALL=ON ${options}
    OUTPUT_QUIET COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ${CMAKE_COMMAND} --build ${WORK_DIR}/build
    OUTPUT_QUIET COMMAND_ERROR_IS_FATAL ANY)
execute_process(
    COMMAND ${CMAKE_CPACK_COMMAND} -G DEB -B ${WORK_DIR}/packages
        --config ${WORK_DIR}/build/CPackConfig.cmake
    OUTPUT_QUIET COMMAND_ERROR_IS_FATAL ANY)

# The control fields.
file(STRINGS ${WORK_DIR}/build/CMakeCache.txt version REGEX "^CMAKE_PROJECT_VERSION:")
string(REGEX REPLACE ".*=" "" version "${version}")
function(expect_field package field)
    file(GLOB deb ${WORK_DIR}/packages/${package}_*.deb)
    if(NOT deb)
        message(FATAL_ERROR "cpack made no ${package} package")
    endif()
    execute_process(COMMAND dpkg-deb --field ${deb} ${field}
        OUTPUT_VARIABLE value OUTPUT_STRIP_TRAILING_WHITESPACE COMMAND_ERROR_IS_FATAL ANY)
    foreach(regex IN LISTS ARGN)
        if(NOT value MATCHES "${regex}")
            message(FATAL_ERROR "${package}: ${field} is '${value}', expected '${regex}'")
        endif()
    endforeach()
    message(STATUS "${package} ${field}: ${value}")
endfunction()
# libctxmgr0's Depends come from dpkg-shlibdeps: what its libraries are linked with.
expect_field(libctxmgr0 Depends "libstdc\\+\\+6" "libsqlite3-0" "libpq5")
expect_field(libctxmgr-dev Depends "^libctxmgr0 \\(= ${version}\\)(,|$)" "libsqlite3-dev"
    "libpq-dev")

# The contents: the shared libraries in one, everything to build with in the other.
function(expect_contents package)
    file(GLOB deb ${WORK_DIR}/packages/${package}_*.deb)
    execute_process(COMMAND dpkg-deb --contents ${deb}
        OUTPUT_VARIABLE contents COMMAND_ERROR_IS_FATAL ANY)
    foreach(regex IN LISTS ARGN)
        if(regex MATCHES "^!(.*)")
            if(contents MATCHES "${CMAKE_MATCH_1}")
                message(FATAL_ERROR "${package} has '${CMAKE_MATCH_1}':\n${contents}")
            endif()
        elseif(NOT contents MATCHES "${regex}")
            message(FATAL_ERROR "${package} has no '${regex}':\n${contents}")
        endif()
    endforeach()
endfunction()
expect_contents(libctxmgr0
    "/libctxmgr\\.so\\.0 -> libctxmgr\\.so\\.${version}"
    "/libctxmgr_sqlite\\.so\\.${version}" "/libctxmgr_postgres\\.so\\.${version}"
    "usr/share/doc/libctxmgr0/copyright"
    "!include/" "!\\.a\n" "!\\.so -> " "!cmake/" "!pkgconfig/")
expect_contents(libctxmgr-dev
    "include/ctxmgr/with\\.hpp" "/libctxmgr\\.so -> libctxmgr\\.so\\.0"
    "/libctxmgr\\.a" "/libctxmgr_sqlite\\.a" "/libctxmgr_postgres\\.a"
    "cmake/ctxmgr/ctxmgrConfig\\.cmake" "cmake/ctxmgr/ctxmgr-postgres-targets\\.cmake"
    "pkgconfig/ctxmgr\\.pc" "pkgconfig/ctxmgr-sqlite\\.pc" "pkgconfig/ctxmgr-postgres\\.pc"
    "usr/share/doc/libctxmgr-dev/copyright"
    "!\\.so\\.${version}")

# Unpacked, as dpkg would install them but under WORK_DIR/root.
file(GLOB debs ${WORK_DIR}/packages/*.deb)
foreach(deb IN LISTS debs)
    execute_process(COMMAND dpkg-deb -x ${deb} ${WORK_DIR}/root COMMAND_ERROR_IS_FATAL ANY)
endforeach()
file(GLOB_RECURSE library ${WORK_DIR}/root/usr/lib/libctxmgr.so.${version})
get_filename_component(libdir "${library}" DIRECTORY)
execute_process(COMMAND readelf -d ${library} OUTPUT_VARIABLE dynamic COMMAND_ERROR_IS_FATAL ANY)
if(NOT dynamic MATCHES "soname: \\[libctxmgr\\.so\\.0\\]")
    message(FATAL_ERROR "libctxmgr.so.${version} has no SONAME libctxmgr.so.0:\n${dynamic}")
endif()

# The root is not in the dynamic loader's path, as /usr is once the packages are installed:
# LD_LIBRARY_PATH stands for it (a program's RUNPATH would not serve libctxmgr_sqlite.so.0's
# own dependency on libctxmgr.so.0).
set(ENV{LD_LIBRARY_PATH} ${libdir})

# CMake: the components asked for, on a machine without SQLite's and libpq's development
# files (shared libraries carry their dependencies).
set(ENV{CMAKE_PREFIX_PATH} ${WORK_DIR}/root/usr)
consumer_project(find_package BUILD COMPONENTS sqlite postgres WITHOUT SQLite3 PostgreSQL
    EXPECT_COMPONENTS "sqlite;postgres")

# pkg-config: the shared libraries, then the static archives with --static
# (Requires.private and Libs.private). Only SQLite statically: Debian's libpq.pc lists
# static libraries in Libs.private that libpq-dev does not ship (-lpgcommon -lpgport).
set(ENV{PKG_CONFIG_PATH} ${libdir}/pkgconfig)
pkg_config_program(ctxmgr main.cpp consumer-pkg-config)
pkg_config_program(ctxmgr-postgres postgres.cpp consumer-postgres-pkg-config)
pkg_config_program(ctxmgr-sqlite sqlite.cpp consumer-sqlite-static STATIC)
file(GLOB programs ${WORK_DIR}/consumer-*)
file(REMOVE_RECURSE ${WORK_DIR}/root ${WORK_DIR}/packages ${WORK_DIR}/find_package ${programs})
