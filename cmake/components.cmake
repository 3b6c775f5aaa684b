# The optional parts of the package: each is a target of its own, a find_package component
# (`find_package(ctxmgr COMPONENTS <name>)`, target ctxmgr::<name>) and a pkg-config file
# (ctxmgr-<name>.pc). A component is declared here whether or not this build can make it, so
# that the installed package can tell a consumer who asks for a missing one what it needs.
#
# ctxmgr_component(<name> TARGET <target> LIBRARY <name, for people> DEBIAN <package>
#                  [FIND_PACKAGE <find_package arguments>] [PKG_CONFIG <module...>]
#                  [COMPONENTS <component...>])
#   TARGET        the target that src/ or cmake/ defines when the component is built; its
#                 EXPORT_NAME must be <name>.
#   LIBRARY       the third-party library it needs, and DEBIAN the package with its
#                 development files (libctxmgr-dev depends on it).
#   FIND_PACKAGE  how ctxmgrConfig.cmake finds the third-party library when the consumer
#                 needs it too (a static or header-only target: a shared library carries it
#                 as DT_NEEDED).
#   PKG_CONFIG    the pkg-config modules of that library (Requires.private of ctxmgr-<name>.pc).
#   COMPONENTS    the components, declared before, that this one builds on: loaded with it, and
#                 Requires of its .pc file.
# Install rules, the CMake export, the pkg-config file, the -dev package's Depends and the
# consumer tests follow from the declaration: adding a component is one call here and the
# file that defines its target.
function(ctxmgr_component name)
    cmake_parse_arguments(PARSE_ARGV 1 arg "" "TARGET;LIBRARY;DEBIAN"
        "FIND_PACKAGE;PKG_CONFIG;COMPONENTS")
    if(NOT arg_TARGET OR NOT arg_LIBRARY OR NOT arg_DEBIAN)
        message(FATAL_ERROR "ctxmgr_component(${name}): TARGET, LIBRARY and DEBIAN are required")
    endif()
    set_property(GLOBAL APPEND PROPERTY ctxmgr_components ${name})
    foreach(field TARGET LIBRARY DEBIAN FIND_PACKAGE PKG_CONFIG COMPONENTS)
        set_property(GLOBAL PROPERTY ctxmgr_component_${name}_${field} "${arg_${field}}")
    endforeach()
endfunction()

ctxmgr_component(sqlite TARGET ctxmgr_sqlite LIBRARY "SQLite 3" DEBIAN libsqlite3-dev
    FIND_PACKAGE SQLite3 PKG_CONFIG sqlite3)
ctxmgr_component(postgres TARGET ctxmgr_postgres LIBRARY libpq DEBIAN libpq-dev
    FIND_PACKAGE PostgreSQL PKG_CONFIG libpq)
# Header-only over standalone Asio (which has neither a CMake package nor a pkg-config module:
# its headers are found on the default include path); Asio itself needs threads.
ctxmgr_component(async TARGET ctxmgr_async LIBRARY "standalone Asio" DEBIAN libasio-dev
    FIND_PACKAGE Threads)
# PostgreSQL connections for Asio coroutines, on the two above.
ctxmgr_component(async_postgres TARGET ctxmgr_async_postgres LIBRARY "libpq and standalone Asio"
    DEBIAN libpq-dev FIND_PACKAGE PostgreSQL PKG_CONFIG libpq COMPONENTS postgres async)
