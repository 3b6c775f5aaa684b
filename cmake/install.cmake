include(CMakePackageConfigHelpers)

install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/ctxmgr
    DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
    FILES_MATCHING PATTERN "*.hpp")

install(TARGETS ${CTXMGR_EXPORTED_TARGETS}
    EXPORT ctxmgrTargets
    ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
    LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
    RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
    INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})

set(CTXMGR_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/ctxmgr)
install(EXPORT ctxmgrTargets
    NAMESPACE ctxmgr::
    DESTINATION ${CTXMGR_CMAKE_DIR})

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
    DESTINATION ${CTXMGR_CMAKE_DIR})

# pkg-config describes ctxmgr::ctxmgr (the core alone needs only the include path). The
# definitions must match the library's, or tracked would have another layout.
# Relative to the .pc file, so the installed tree can be moved or installed with --prefix.
file(RELATIVE_PATH pc_to_prefix /${CMAKE_INSTALL_LIBDIR}/pkgconfig /)
set(CTXMGR_PC_PREFIX "\${pcfiledir}/${pc_to_prefix}")
set(CTXMGR_PC_DEFINITIONS "")
set(CTXMGR_PC_LIBS "")
if(CTXMGR_HAS_COMPILED)
    foreach(option CTXMGR_TRACKING CTXMGR_LOCK_ORDER_CHECK)
        if(${option})
            string(APPEND CTXMGR_PC_DEFINITIONS " -D${option}=1")
        else()
            string(APPEND CTXMGR_PC_DEFINITIONS " -D${option}=0")
        endif()
    endforeach()
    set(CTXMGR_PC_LIBS "-L\${libdir} -lctxmgr -pthread")
endif()
configure_file(${PROJECT_SOURCE_DIR}/cmake/ctxmgr.pc.in ${PROJECT_BINARY_DIR}/ctxmgr.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/ctxmgr.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
