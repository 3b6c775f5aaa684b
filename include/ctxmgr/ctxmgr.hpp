// ctxmgr/ctxmgr.hpp: everything in ctxmgr that needs no third-party library.
//
// The protocol and composition layers are header-only; leak tracking and the resources (locks,
// file locks, ...) link ctxmgr::ctxmgr.
// The database back ends are included on purpose: <ctxmgr/sqlite.hpp>, <ctxmgr/postgres.hpp>.
//
//   #include <ctxmgr/ctxmgr.hpp>
//   ctxmgr::with(ctxmgr::suppress<std::runtime_error>(), [] { ... });
#pragma once

#include "contextlib.hpp"
#include "contextmanager.hpp"
#include "errors.hpp"
#include "exit_stack.hpp"
#include "file.hpp"
#include "file_lock.hpp"
#include "lock.hpp"
#include "net.hpp"
#include "protocol.hpp"
#include "scope.hpp"
#include "tracking.hpp"
#include "unraisable.hpp"
#include "with.hpp"
