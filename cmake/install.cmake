# Install rules, in two install components that are also the two Debian packages
# (cmake/package.cmake): `runtime` (the shared libraries, libctxmgr0) and `development`
# (headers, static libraries, the CMake package, the pkg-config files: libctxmgr-dev); and
# `license`, LICENSE for a plain `cmake --install`.
include(CMakePackageConfigHelpers)

set(CTXMGR_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/ctxmgr)
set(CTXMGR_PKG_CONFIG_DIR ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/ctxmgr
    DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
    COMPONENT development
    FILES_MATCHING PATTERN "*.hpp")
# Not in either package, which carry it as Debian's copyright file (cmake/package.cmake).
install(FILES ${PROJECT_SOURCE_DIR}/LICENSE
    DESTINATION ${CMAKE_INSTALL_DOCDIR}
    COMPONENT license)

# ctxmgr_install_targets(<export set> <target...>): the targets, and <export set>.cmake that
# defines them as ctxmgr::<EXPORT_NAME> for find_package.
function(ctxmgr_install_targets export)
    install(TARGETS ${ARGN}
        EXPORT ${export}
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT development
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT runtime
            NAMELINK_COMPONENT development
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT runtime
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
    foreach(target IN LISTS ARGN)
        if(TARGET ${target}_static)
            install(TARGETS ${target}_static
                ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT development)
        endif()
    endforeach()
    install(EXPORT ${export}
        NAMESPACE ctxmgr::
        FILE ${export}.cmake
        DESTINATION ${CTXMGR_CMAKE_DIR}
        COMPONENT development)
endfunction()

# pkg-config files are relative to their own folder, so the installed tree can be moved, or
# installed with --prefix, or unpacked anywhere (dpkg -x).
file(RELATIVE_PATH pc_to_prefix /${CTXMGR_PKG_CONFIG_DIR} /)
set(CTXMGR_PC_PREFIX "\${pcfiledir}/${pc_to_prefix}")

# ctxmgr_pkg_config(<module> <target> DESCRIPTION <text> [CFLAGS <flag...>]
#                   [REQUIRES <module...>] [REQUIRES_PRIVATE <module...>] [LIBS_PRIVATE <flag...>])
#   <module>.pc for <target>. The *_PRIVATE parts are what linking the shared library
#   itself needs (`pkg-config --static`); with a static library (or a header-only one) every
#   consumer needs them, so they move to Requires and Libs. No -std= flag: the consumer
#   chooses its standard (C++20 or later).
function(ctxmgr_pkg_config module target)
    cmake_parse_arguments(PARSE_ARGV 2 arg "" "DESCRIPTION"
        "CFLAGS;REQUIRES;REQUIRES_PRIVATE;LIBS_PRIVATE")
    get_target_property(type ${target} TYPE)
    set(libs)
    if(NOT type STREQUAL "INTERFACE_LIBRARY")
        get_target_property(output ${target} OUTPUT_NAME)
        set(libs "-L\${libdir} -l${output}")
    endif()
    if(NOT type STREQUAL "SHARED_LIBRARY")
        list(APPEND arg_REQUIRES ${arg_REQUIRES_PRIVATE})
        list(APPEND libs ${arg_LIBS_PRIVATE})
        set(arg_REQUIRES_PRIVATE)
        set(arg_LIBS_PRIVATE)
    endif()
    string(JOIN " " pc_cflags "-I\${includedir}" ${arg_CFLAGS})
    string(JOIN ", " pc_requires ${arg_REQUIRES})
    string(JOIN ", " pc_requires_private ${arg_REQUIRES_PRIVATE})
    string(JOIN " " pc_libs ${libs})
    string(JOIN " " pc_libs_private ${arg_LIBS_PRIVATE})
    set(pc_name ${module})
    set(pc_description "${arg_DESCRIPTION}")
    configure_file(${PROJECT_SOURCE_DIR}/cmake/ctxmgr.pc.in ${PROJECT_BINARY_DIR}/${module}.pc @ONLY)
    install(FILES ${PROJECT_BINARY_DIR}/${module}.pc
        DESTINATION ${CTXMGR_PKG_CONFIG_DIR}
        COMPONENT development)
endfunction()

# ctxmgr::core and ctxmgr::ctxmgr. ctxmgr.pc describes ctxmgr::ctxmgr (the core alone needs
# only the include path); its definitions must match the library's, or tracked would have
# another layout.
ctxmgr_install_targets(ctxmgr-targets ctxmgr_core ctxmgr_ctxmgr)
set(definitions)
foreach(option CTXMGR_TRACKING CTXMGR_LOCK_ORDER_CHECK)
    if(${option})
        list(APPEND definitions -D${option}=1)
    else()
        list(APPEND definitions -D${option}=0)
    endif()
endforeach()
ctxmgr_pkg_config(ctxmgr ctxmgr_ctxmgr
    DESCRIPTION "${PROJECT_DESCRIPTION}"
    CFLAGS ${definitions}
    LIBS_PRIVATE -pthread)

# The components (cmake/components.cmake): those built get a targets file and a .pc file of
# their own; ctxmgrConfig.cmake learns which exist and what each needs.
get_property(components GLOBAL PROPERTY ctxmgr_components)
set(built)
set(CTXMGR_CONFIG_COMPONENTS "")
foreach(name IN LISTS components)
    foreach(field TARGET LIBRARY DEBIAN FIND_PACKAGE PKG_CONFIG COMPONENTS)
        get_property(${field} GLOBAL PROPERTY ctxmgr_component_${name}_${field})
    endforeach()
    string(APPEND CTXMGR_CONFIG_COMPONENTS
        "set(_ctxmgr_needs_${name} \"${LIBRARY} (Debian: ${DEBIAN})\")\n"
        "set(_ctxmgr_requires_${name} ${COMPONENTS})\n")
    if(NOT TARGET ${TARGET})
        continue()
    endif()
    get_target_property(export_name ${TARGET} EXPORT_NAME)
    if(NOT export_name STREQUAL name)
        message(FATAL_ERROR "ctxmgr component ${name}: ${TARGET}'s EXPORT_NAME is ${export_name}")
    endif()
    list(APPEND built ${name})
    ctxmgr_install_targets(ctxmgr-${name}-targets ${TARGET})
    get_target_property(type ${TARGET} TYPE)
    if(FIND_PACKAGE AND NOT type STREQUAL "SHARED_LIBRARY")
        string(APPEND CTXMGR_CONFIG_COMPONENTS "set(_ctxmgr_find_${name} ${FIND_PACKAGE})\n")
    endif()
    list(TRANSFORM COMPONENTS PREPEND "ctxmgr-" OUTPUT_VARIABLE component_modules)
    ctxmgr_pkg_config(ctxmgr-${name} ${TARGET}
        DESCRIPTION "ctxmgr::${name}, the ${name} component of ctxmgr"
        REQUIRES ctxmgr ${component_modules}
        REQUIRES_PRIVATE ${PKG_CONFIG})
endforeach()
string(APPEND CTXMGR_CONFIG_COMPONENTS
    "set(_ctxmgr_known ${components})\nset(_ctxmgr_built ${built})")

configure_package_config_file(
    ${PROJECT_SOURCE_DIR}/cmake/ctxmgrConfig.cmake.in
    ${PROJECT_BINARY_DIR}/ctxmgrConfig.cmake
    INSTALL_DESTINATION ${CTXMGR_CMAKE_DIR})
write_basic_package_version_file(
    ${PROJECT_BINARY_DIR}/ctxmgrConfigVersion.cmake
    COMPATIBILITY SameMinorVersion)
install(FILES
    ${PROJECT_BINARY_DIR}/ctxmgrConfig.cmake
    ${PROJECT_BINARY_DIR}/ctxmgrConfigVersion.cmake
    DESTINATION ${CTXMGR_CMAKE_DIR}
    COMPONENT development)
