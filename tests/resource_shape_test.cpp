// Every resource has the same shape (ARCHITECTURE.md): move-only, a context manager, a
// destructor that cannot throw, a `closed()` query, and where it has a native handle, one that
// is readable (an invalid value) after close.
#include <ctxmgr/distributed_lock.hpp>
#include <ctxmgr/file.hpp>
#include <ctxmgr/file_lock.hpp>
#include <ctxmgr/net.hpp>
#include <ctxmgr/pool.hpp>
#include <ctxmgr/postgres.hpp>
#include <ctxmgr/sqlite.hpp>
#include <ctxmgr/with.hpp>

#include <gtest/gtest.h>

#include <concepts>
#include <type_traits>
#include <utility>

#include "temp_directory.hpp"

namespace {

template <class R>
concept has_closed_query = requires(const R& r) {
    { r.closed() }
    noexcept->std::same_as<bool>;
};

template <class R>
concept has_readable_native_handle = requires(const R& r) {
    { r.native_handle() }
    noexcept;
};

template <class R>
constexpr bool resource_shape() {
    static_assert(!std::is_copy_constructible_v<R> && !std::is_copy_assignable_v<R>,
                  "a resource is move-only");
    static_assert(std::is_nothrow_move_constructible_v<R>, "moving a resource cannot fail");
    static_assert(std::is_nothrow_destructible_v<R>, "a resource's destructor never throws");
    static_assert(ctxmgr::context_manager<R>, "a resource is its own manager");
    static_assert(has_closed_query<R>, "a resource says whether it is closed, noexcept");
    return true;
}

using sqlite_connection = ctxmgr::sqlite::connection;
using postgres_connection = ctxmgr::postgres::connection;

static_assert(resource_shape<ctxmgr::file>());
static_assert(resource_shape<ctxmgr::atomic_write>());
static_assert(resource_shape<ctxmgr::temporary_directory>());
static_assert(resource_shape<ctxmgr::file_lock>());
static_assert(resource_shape<ctxmgr::tcp::connection>());
static_assert(resource_shape<ctxmgr::tcp::listener>());
static_assert(resource_shape<sqlite_connection>());
static_assert(resource_shape<postgres_connection>());
static_assert(resource_shape<ctxmgr::pooled_connection<sqlite_connection>>());
static_assert(resource_shape<ctxmgr::postgres::advisory_lock>());

// A transaction ends only by exit (commit or rollback), so it has no close() and no closed();
// the rest of the shape holds.
using sqlite_transaction = ctxmgr::db::transaction<sqlite_connection>;
static_assert(!std::is_copy_constructible_v<sqlite_transaction>);
static_assert(std::is_nothrow_move_constructible_v<sqlite_transaction>);
static_assert(std::is_nothrow_destructible_v<sqlite_transaction>);
static_assert(ctxmgr::context_manager<sqlite_transaction>);

static_assert(has_readable_native_handle<ctxmgr::file>);
static_assert(has_readable_native_handle<ctxmgr::tcp::connection>);
static_assert(has_readable_native_handle<ctxmgr::tcp::listener>);
static_assert(has_readable_native_handle<sqlite_connection>);
static_assert(has_readable_native_handle<postgres_connection>);

TEST(ResourceShape, AClosedResourceSaysSoAndItsNativeHandleIsInvalid) {
    ctxmgr::testing::temp_directory dir;
    auto f = ctxmgr::open(dir.path() / "f", "w");
    EXPECT_FALSE(f.closed());
    EXPECT_GE(f.native_handle(), 0);
    f.close();
    EXPECT_TRUE(f.closed());
    EXPECT_EQ(f.native_handle(), -1);

    auto listener = ctxmgr::tcp::listen("127.0.0.1", 0);
    EXPECT_FALSE(listener.closed());
    listener.close();
    EXPECT_TRUE(listener.closed());
    EXPECT_EQ(listener.native_handle(), -1);

    auto db = ctxmgr::sqlite::connect(":memory:");
    EXPECT_FALSE(db.closed());
    db.close();
    EXPECT_TRUE(db.closed());
    EXPECT_EQ(db.native_handle(), nullptr);
}

TEST(ResourceShape, ALazyManagerIsClosedUntilEnteredAndAfterExit) {
    ctxmgr::testing::temp_directory dir;
    auto lock = ctxmgr::file_lock(dir.path() / "lock");
    EXPECT_TRUE(lock.closed());
    ctxmgr::with(lock, [&] { EXPECT_FALSE(lock.closed()); });
    EXPECT_TRUE(lock.closed());
}

}  // namespace
