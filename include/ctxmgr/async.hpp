// ctxmgr/async.hpp: the async half of ctxmgr, on standalone Asio's coroutines.
//
// Includes every async header: the protocol (async_protocol.hpp), async_with and
// async_decorate (async_with.hpp), async_exit_stack, async_contextmanager, aclosing and
// async_nullcontext (async_contextlib.hpp), async_mutex, pool.async_connection()
// (async_pool.hpp), and TCP connections and listeners (async_net.hpp). Link ctxmgr::async
// (it brings Asio's include directory, Threads and ctxmgr::ctxmgr); ctxmgr.hpp does not
// include this header, so a program that does not use it needs no Asio.
//
//   co_await ctxmgr::async_with(m.lock(), [&]() -> asio::awaitable<void> {
//       co_await flush(buffer);               // held across the co_await, no thread blocked
//   });
#pragma once

#include "async_contextlib.hpp"
#include "async_contextmanager.hpp"
#include "async_exit_stack.hpp"
#include "async_mutex.hpp"
#include "async_net.hpp"
#include "async_pool.hpp"
#include "async_protocol.hpp"
#include "async_with.hpp"
