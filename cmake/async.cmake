# ctxmgr::async: async_with, async_exit_stack, async_contextmanager, async_mutex and async TCP on
# standalone Asio's coroutines (include/ctxmgr/async.hpp). Header-only, like Asio itself.
# Defined only when asio.hpp is found, so a build or a user that never includes the async
# headers needs no Asio.
find_path(CTXMGR_ASIO_INCLUDE_DIR asio.hpp DOC "Directory holding standalone Asio's asio.hpp")
if(NOT CTXMGR_ASIO_INCLUDE_DIR)
    message(STATUS "ctxmgr: asio.hpp not found, ctxmgr::async is not built")
    set(CTXMGR_HAS_ASYNC OFF)
    return()
endif()
find_package(Threads REQUIRED)

add_library(ctxmgr_async INTERFACE)
add_library(ctxmgr::async ALIAS ctxmgr_async)
set_target_properties(ctxmgr_async PROPERTIES EXPORT_NAME async)
target_include_directories(ctxmgr_async SYSTEM INTERFACE $<BUILD_INTERFACE:${CTXMGR_ASIO_INCLUDE_DIR}>)
# ASIO_NO_DEPRECATED is left to the user: defining it here would change Asio's interface for
# the rest of their program (io_service and the other removed names), and ctxmgr uses none of
# the deprecated names, so it builds either way (the tests define it to prove so).
# ctxmgr::ctxmgr for async_net.hpp: its connections are tracked (tracking.hpp) and share
# net.hpp's endpoints and error wording.
target_link_libraries(ctxmgr_async INTERFACE ctxmgr_core ctxmgr_ctxmgr Threads::Threads)
# Asio 1.22 enables co_await under Clang only with <experimental/coroutine> (libc++'s old
# header); Clang 16 with libstdc++ has C++20's <coroutine>, which Asio uses when told to.
target_compile_definitions(ctxmgr_async INTERFACE
    $<$<CXX_COMPILER_ID:Clang>:ASIO_HAS_CO_AWAIT=1;ASIO_HAS_STD_COROUTINE=1>)
set(CTXMGR_HAS_ASYNC ON)
