// ctxmgr/db/transaction.hpp: the transaction manager of every back end, and what describes
// a transaction (transaction_state, isolation_level, transaction_options).
//
// BEGIN on enter, COMMIT on a clean exit, ROLLBACK when the block throws, a SAVEPOINT when
// a transaction is already open (psycopg 3's rule). Guarantees, on exception and on a lost
// connection: see the comment of db::transaction below. Made by conn.transaction(options);
// part of <ctxmgr/db.hpp>.
//
//   ctxmgr::with(conn.transaction({.isolation = ctxmgr::db::isolation_level::serializable}),
//                [](auto& c) { c.execute("UPDATE account SET n = n - 1 WHERE id = $1", 7); });
#pragma once

#include <cstdint>
#include <exception>
#include <source_location>
#include <string>
#include <string_view>
#include <utility>

#include "../detail/entry_check.hpp"
#include "../errors.hpp"
#include "../release.hpp"
#include "../unraisable.hpp"

namespace ctxmgr::db {

// Where the session's transaction stands, as the back end itself reports it (libpq's
// PQtransactionStatus, sqlite3_get_autocommit), never from ctxmgr's bookkeeping:
//   idle     no transaction open (autocommit)
//   active   inside a transaction block
//   failed   inside a transaction block that an error aborted (PostgreSQL only: only
//            ROLLBACK, or ROLLBACK TO a savepoint, is accepted until then)
//   unknown  no session to ask: closed, or the connection is lost
enum class transaction_state { idle, active, failed, unknown };

[[nodiscard]] constexpr std::string_view to_string(transaction_state state) noexcept {
    switch (state) {
        case transaction_state::idle:
            return "idle";
        case transaction_state::active:
            return "active";
        case transaction_state::failed:
            return "failed";
        case transaction_state::unknown:
            return "unknown";
    }
    return "?";
}

// PostgreSQL's isolation levels. SQLite's transactions are always serializable, which every
// level allows (the SQL standard lets a level be stronger than asked for).
enum class isolation_level { server_default, read_committed, repeatable_read, serializable };

// How conn.transaction() begins. Applies to an outermost transaction; a nested one is a
// savepoint inside it and inherits its mode.
struct transaction_options {
    // SQLite: BEGIN DEFERRED instead of BEGIN IMMEDIATE (which takes the write lock at once,
    // so that a busy writer waits busy_timeout instead of failing on the read-to-write
    // upgrade). PostgreSQL: BEGIN READ ONLY.
    bool read_only = false;
    isolation_level isolation = isolation_level::server_default;
};

template <class Derived>
class basic_connection;

// The transaction manager returned by conn.transaction(options).
//
// enter(): when the back end reports no open transaction, BEGIN (SQLite: BEGIN IMMEDIATE,
// or DEFERRED for read_only; PostgreSQL: BEGIN with the isolation level and READ ONLY);
// otherwise SAVEPOINT ctxmgr_<n>. Returns the connection.
//
// exit(e) with no exception: COMMIT (RELEASE SAVEPOINT). A failing COMMIT throws its error
// (a deferred constraint: constraint_violation; serialization_failure; ...) after rolling
// back whatever it left open, so no transaction stays open. A transaction that an error
// inside the block aborted (PostgreSQL's failed state: the block caught that error and
// went on) is rolled back and exit throws db::error with SQLSTATE 25P02: its work is lost
// and the caller must know. A transaction already ended inside the block (by an explicit
// COMMIT or ROLLBACK, or by SQLite after a disk-full or I/O error) throws db::error too.
//
// exit(e) with an exception: ROLLBACK (ROLLBACK TO SAVEPOINT, then RELEASE), and `e`
// propagates unchanged. When the connection is lost (is_open() is false: the block's
// statement met the broken link), no rollback is attempted: the server discards the
// transaction with the session, and `e` alone propagates. A rollback that finds the link
// broken is no error of its own either. Another failure to roll back is thrown with `e`
// nested in it (throw_chained).
//
// Transactions of one connection exit in reverse order of entering (with() does that):
// otherwise exit throws protocol_error. Entering twice throws protocol_error. After
// rollback_any() or close(), the transactions entered before are over: their exit throws
// db::error when no exception is pending, and neither exit nor destructor touches the
// session again (which may be in another transaction by then, e.g. lent out by a pool).
//
// The destructor of a transaction entered and never exited rolls it back, never throws, and
// reports a failure to the unraisable hook. One never entered began nothing: its destructor
// reports that, naming the line that made it, to the unraisable hook (protocol_error). Move-only;
// holds a pointer to the connection, which must outlive it and not move while it is entered.
// Thread-compatible.
template <class Connection>
class [[nodiscard]] transaction {
  public:
    transaction(Connection& connection, transaction_options options,
                std::source_location where = std::source_location::current()) noexcept
        : connection_(&connection), options_(options), check_(where) {}
    transaction(transaction&& other) noexcept
        : connection_(other.connection_),
          options_(other.options_),
          check_(std::move(other.check_)),
          savepoint_(other.savepoint_),
          depth_(other.depth_),
          epoch_(other.epoch_),
          entered_(std::exchange(other.entered_, false)),
          exited_(other.exited_) {}
    transaction& operator=(transaction&&) = delete;
    transaction(const transaction&) = delete;
    transaction& operator=(const transaction&) = delete;

    ~transaction() {
        if (!entered_ || exited_ || base().epoch_ != epoch_ || !connection_->is_open()) return;
        exited_ = true;
        --base().depth_;
        release_in_destructor(
            [&] { roll_back(); },
            [&] { return std::string(connection_->kind()) + ' ' + connection_->description(); },
            connection_->kind(), "rollback of a transaction never exited");
    }

    Connection& enter() {
        check_.entered();
        if (entered_ || exited_) throw protocol_error("transaction entered twice");
        Connection& c = *connection_;
        if (c.transaction_state() == transaction_state::idle) {
            c.begin(options_);
        } else {
            const std::uint64_t id = base().savepoints_ + 1;
            c.execute_script("SAVEPOINT " + savepoint_name(id));
            base().savepoints_ = id;
            savepoint_ = id;
        }
        depth_ = ++base().depth_;
        epoch_ = base().epoch_;
        entered_ = true;
        return c;
    }

    void exit(const std::exception_ptr& e) {
        if (!entered_ || exited_) throw protocol_error("transaction exited without being entered");
        if (base().epoch_ != epoch_) {
            // rollback_any() or close() ended it: nothing of ours is open any more.
            exited_ = true;
            if (e) return;
            throw_ended(
                "the transaction was already ended by rollback_any() or close(); its "
                "work is lost",
                "", "COMMIT");
        }
        if (base().depth_ != depth_) {
            throw protocol_error(
                "transaction exited out of order: an inner transaction of this connection is "
                "still entered");
        }
        exited_ = true;
        --base().depth_;
        if (!e) {
            commit();
            return;
        }
        // A lost session (PostgreSQL says so once a statement met the broken link): the
        // server discards the transaction with it, and a ROLLBACK could only fail again.
        if (!connection_->is_open()) return;
        release_on_exit(e, [&] {
            try {
                roll_back();
            } catch (const connection_error&) {
                // Lost while rolling back: the server discards the transaction all the same,
                // and the block's exception says what went wrong first.
            }
        });
    }

    // True when this transaction is a savepoint inside another (known once entered).
    [[nodiscard]] bool is_savepoint() const noexcept { return savepoint_ != 0; }

  private:
    static std::string savepoint_name(std::uint64_t id) { return "ctxmgr_" + std::to_string(id); }

    basic_connection<Connection>& base() noexcept { return *connection_; }

    [[noreturn]] void throw_ended(std::string_view what, const char* sqlstate,
                                  std::string_view sql) {
        throw error(std::string(connection_->backend()), sqlstate, 0, std::string(what),
                    std::string(sql));
    }

    void commit() {
        Connection& c = *connection_;
        const transaction_state state = c.transaction_state();
        const std::string statement = savepoint_ != 0
                                          ? "RELEASE SAVEPOINT " + savepoint_name(savepoint_)
                                          : std::string("COMMIT");
        if (state == transaction_state::failed) {
            roll_back();
            throw_ended(savepoint_ != 0 ? "an error inside the savepoint aborted its work, which "
                                          "was rolled back to the savepoint"
                                        : "an error inside the transaction aborted it; rolled back "
                                          "instead of committed",
                        "25P02", statement);
        }
        if (state == transaction_state::idle) {
            throw_ended(
                "the transaction was already ended inside the block (an explicit COMMIT "
                "or ROLLBACK, or a rollback by the back end after an error); its work "
                "may be lost",
                "", statement);
        }
        // Unknown (lost or closed): COMMIT below throws connection_error or closed_error, the
        // clearest errors there are.
        try {
            c.execute_script(statement);
        } catch (const connection_error&) {
            throw;  // nothing left to roll back; the outcome of COMMIT is unknown
        } catch (const error&) {
            // SQLite keeps a transaction open after a failing COMMIT (SQLITE_BUSY, a deferred
            // foreign key); PostgreSQL ends it. Leave none open, then report the failure.
            if (c.transaction_state() != transaction_state::idle) {
                try {
                    roll_back();
                } catch (const connection_error&) {
                    // Lost: nothing stays open on the server.
                } catch (...) {
                    // The commit's failure is the error to throw; this one is reported.
                    report_release_failure(
                        [&] { return std::string(c.kind()) + ' ' + c.description(); }, c.kind(),
                        "rollback after a failed commit");
                }
            }
            throw;
        }
    }

    void roll_back() {
        Connection& c = *connection_;
        const transaction_state state = c.transaction_state();
        if (state == transaction_state::idle) return;  // the back end ended it already
        if (savepoint_ != 0) {
            const std::string name = savepoint_name(savepoint_);
            c.execute_script("ROLLBACK TO SAVEPOINT " + name + "; RELEASE SAVEPOINT " + name);
        } else {
            c.execute_script("ROLLBACK");
        }
    }

    Connection* connection_;
    transaction_options options_;
    [[no_unique_address]] ctxmgr::detail::entry_check<"db::transaction"> check_;
    std::uint64_t savepoint_ = 0;
    int depth_ = 0;
    std::uint64_t epoch_ = 0;
    bool entered_ = false;
    bool exited_ = false;
};

}  // namespace ctxmgr::db
