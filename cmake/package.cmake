# Debian packages, `cpack -G DEB` in a build configured like the `release` preset
# (BUILD_SHARED_LIBS=ON, CTXMGR_STATIC_ARCHIVES=ON, CMAKE_INSTALL_PREFIX=/usr):
#   libctxmgr0     the install component `runtime`: the shared libraries (SONAME
#                  libctxmgr.so.0, ...); its Depends come from dpkg-shlibdeps.
#   libctxmgr-dev  the install component `development`: headers, the libraries' .so links and
#                  static archives, the CMake package and the pkg-config files. It depends on
#                  libctxmgr0 of exactly this version, and on the -dev packages of the client
#                  libraries its components link (the static archives need them).
# Both carry LICENSE as /usr/share/doc/<package>/copyright. A build with static libraries
# only makes libctxmgr-dev alone.
set(CTXMGR_RUNTIME_PACKAGE libctxmgr${PROJECT_VERSION_MAJOR})
set(CTXMGR_DEV_PACKAGE libctxmgr-dev)

foreach(package_component runtime development)
    if(package_component STREQUAL "runtime")
        set(package ${CTXMGR_RUNTIME_PACKAGE})
    else()
        set(package ${CTXMGR_DEV_PACKAGE})
    endif()
    # EXCLUDE_FROM_ALL: only in the packages; a plain `cmake --install` has
    # share/doc/ctxmgr/LICENSE instead.
    install(FILES ${PROJECT_SOURCE_DIR}/LICENSE
        DESTINATION ${CMAKE_INSTALL_DATAROOTDIR}/doc/${package}
        RENAME copyright
        COMPONENT ${package_component}
        EXCLUDE_FROM_ALL)
endforeach()

set(dev_depends)
if(BUILD_SHARED_LIBS)
    set(dev_depends "${CTXMGR_RUNTIME_PACKAGE} (= ${PROJECT_VERSION})")
    set(CPACK_COMPONENTS_ALL runtime development)
else()
    set(CPACK_COMPONENTS_ALL development)
endif()
get_property(components GLOBAL PROPERTY ctxmgr_components)
foreach(component IN LISTS components)
    get_property(target GLOBAL PROPERTY ctxmgr_component_${component}_TARGET)
    if(TARGET ${target})
        get_property(debian GLOBAL PROPERTY ctxmgr_component_${component}_DEBIAN)
        list(APPEND dev_depends ${debian})
    endif()
endforeach()
list(REMOVE_DUPLICATES dev_depends)

set(CPACK_PACKAGE_NAME ctxmgr)
set(CPACK_PACKAGE_VENDOR "the ctxmgr authors")
set(CPACK_PACKAGE_CONTACT "the ctxmgr authors")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "${PROJECT_DESCRIPTION}")
set(CPACK_RESOURCE_FILE_LICENSE ${PROJECT_SOURCE_DIR}/LICENSE)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)

set(CPACK_DEBIAN_RUNTIME_PACKAGE_NAME ${CTXMGR_RUNTIME_PACKAGE})
set(CPACK_DEBIAN_RUNTIME_PACKAGE_SECTION libs)
set(CPACK_DEBIAN_RUNTIME_PACKAGE_SHLIBDEPS ON)
# The shlibs control file, so that packages built against libctxmgr0 get their Depends from
# dpkg-shlibdeps in turn.
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS ON)
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS_POLICY ">=")
set(CPACK_COMPONENT_RUNTIME_DESCRIPTION
    "ctxmgr: Python's context managers for C++20 (shared libraries)")

set(CPACK_DEBIAN_DEVELOPMENT_PACKAGE_NAME ${CTXMGR_DEV_PACKAGE})
set(CPACK_DEBIAN_DEVELOPMENT_PACKAGE_SECTION libdevel)
string(JOIN ", " CPACK_DEBIAN_DEVELOPMENT_PACKAGE_DEPENDS ${dev_depends})
set(CPACK_COMPONENT_DEVELOPMENT_DESCRIPTION
    "ctxmgr: Python's context managers for C++20 (headers, static libraries, CMake and pkg-config files)")

include(CPack)
