// ctxmgr/ctxmgr.hpp: everything in ctxmgr that needs no third-party library.
//

//
//   #include <ctxmgr/ctxmgr.hpp>
//   ctxmgr::with(ctxmgr::suppress<std::runtime_error>(), [] { ... });
#pragma once

#include "contextlib.hpp"
#include "contextmanager.hpp"
#include "db.hpp"
#include "errors.hpp"
#include "exit_stack.hpp"
#include "file.hpp"
#include "file_lock.hpp"
#include "lock.hpp"
#include "net.hpp"
#include "pool.hpp"
#include "protocol.hpp"
#include "scope.hpp"
#include "tracking.hpp"
#include "unraisable.hpp"
#include "with.hpp"
