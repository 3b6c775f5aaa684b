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

configure_file(${PROJECT_SOURCE_DIR}/cmake/ctxmgr.pc.in ${PROJECT_BINARY_DIR}/ctxmgr.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/ctxmgr.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
