// ctxmgr/errors.hpp: the library's one exception hierarchy.
//
// Every component throws one of these, so a caller can catch by meaning rather than by
// component:
//
//   std::logic_error
//     protocol_error        misuse of the protocol (entering twice, a coroutine manager
//       closed_error        that does not yield); use of a closed resource
//   std::system_error
//     io_error              a failed system call on a file; keeps errno and the path
//     network_error         a failed socket call or name resolution; names the peer
//   std::runtime_error
//     timeout_error         a lock, connection or pool wait that ran out of time
//     too_many_waiters      a pool borrower refused at once: max_waiting are waiting
//     leak_error            resources still live where none should be
//     db::error             a database error; subclasses follow the server's classes
//                           (constraint_violation, serialization_failure,
//                           connection_error and its commit_outcome_unknown), and
//                           conversion_error for values
//
// Guarantees: every message names the operation and the object (path, endpoint, redacted
// connection string, lock name), so a log line alone says what failed. Constructing an
// exception may throw std::bad_alloc; nothing else. All types are thread-compatible.
//
//   try {
//       ctxmgr::with(ctxmgr::open("/tmp/x", "w"), [](ctxmgr::file& f) { f.write("x"); });
//   } catch (const ctxmgr::io_error& e) {
//       std::cerr << e.what() << '\n';   // write "/tmp/x": No space left on device
//   }
//
// describe(e) renders an exception and the ones nested in it (std::throw_with_nested) on
// one line each; the unraisable hook and the leak reports use it. throw_chained(failure,
// pending) throws a release failure with the pending exception nested in it.
#pragma once

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <typeinfo>
#include <utility>

#if __has_include(<cxxabi.h>)
#include <cxxabi.h>

#include <cstdlib>
#include <memory>
#endif

namespace ctxmgr {

// Misuse of the context-manager protocol: what CPython reports with RuntimeError or
// TypeError (entering a one-shot manager twice, a generator that does not yield).
class protocol_error : public std::logic_error {
  public:
    using std::logic_error::logic_error;
};

// Use of a resource after close(). The message names the operation and the resource.
class closed_error : public protocol_error {
  public:
    using protocol_error::protocol_error;
};

// A failed system call on a file. what() reads `write "/tmp/x": No space left on device`;
// code() keeps the errno, path() the file.
class io_error : public std::system_error {
  public:
    io_error(std::string_view operation, std::string path, int error_number)
        : std::system_error(error_number, std::generic_category(),
                            std::string(operation) + " \"" + path + '"'),
          path_(std::move(path)) {}
    // A refusal with a reason of its own, before the errno's text: `read "/tmp/x": not
    // readable: Bad file descriptor`.
    io_error(std::string_view operation, std::string path, int error_number,
             std::string_view reason)
        : std::system_error(error_number, std::generic_category(),
                            std::string(operation) + " \"" + path + "\": " + std::string(reason)),
          path_(std::move(path)) {}

    [[nodiscard]] const std::string& path() const noexcept { return path_; }

  private:
    std::string path_;
};

// A failed socket call or name resolution. what() reads
// `connect 127.0.0.1:5: Connection refused`.
class network_error : public std::system_error {
  public:
    network_error(std::string_view operation, std::string peer, std::error_code code)
        : std::system_error(code, std::string(operation) + ' ' + peer), peer_(std::move(peer)) {}
    network_error(std::string_view operation, std::string peer, int error_number)
        : network_error(operation, std::move(peer),
                        std::error_code(error_number, std::generic_category())) {}

    [[nodiscard]] const std::string& peer() const noexcept { return peer_; }

  private:
    std::string peer_;
};

// "1.5 s", "20 ms", "300 us": a duration in the unit a person would use, three significant
// digits. Used in timeout messages and leak reports.
[[nodiscard]] inline std::string format_duration(std::chrono::nanoseconds d) {
    const auto ns = d.count();
    char buffer[48];
    if (ns >= 1'000'000'000 || ns <= -1'000'000'000) {
        std::snprintf(buffer, sizeof buffer, "%.3g s", static_cast<double>(ns) / 1e9);
    } else if (ns >= 1'000'000 || ns <= -1'000'000) {
        std::snprintf(buffer, sizeof buffer, "%.3g ms", static_cast<double>(ns) / 1e6);
    } else if (ns >= 1'000 || ns <= -1'000) {
        std::snprintf(buffer, sizeof buffer, "%.3g us", static_cast<double>(ns) / 1e3);
    } else {
        std::snprintf(buffer, sizeof buffer, "%lld ns", static_cast<long long>(ns));
    }
    return buffer;
}

// A wait that ran out of time: a lock, a connect, a receive, a pool acquire, a distributed
// lock. The message says what was waited for and for how long.
class timeout_error : public std::runtime_error {
  public:
    timeout_error(std::string_view what_waited_for, std::chrono::nanoseconds waited)
        : std::runtime_error(std::string("timed out after ") + format_duration(waited) +
                             " waiting for " + std::string(what_waited_for)),
          waited_(waited) {}
    explicit timeout_error(const std::string& message) : std::runtime_error(message), waited_(0) {}

    [[nodiscard]] std::chrono::nanoseconds waited() const noexcept { return waited_; }

  private:
    std::chrono::nanoseconds waited_;
};

// A pool borrower turned away without waiting, because pool_options::max_waiting borrowers
// wait already. The message names the pool and the limit.
class too_many_waiters : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

// Resources that are still live where none should be (see tracking.hpp).
class leak_error : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

namespace db {

template <class Derived>
class basic_connection;
class rows;

// A database error. Carries the back end ("sqlite" or "postgresql"), PostgreSQL's SQLSTATE
// (empty for SQLite), SQLite's extended result code (0 for PostgreSQL) and its name
// ("SQLITE_CONSTRAINT_PRIMARYKEY"), the server's message, the statement (shortened) and the
// connection's call that ran it; what() has all of them: `sqlite
// [SQLITE_CONSTRAINT_PRIMARYKEY]: UNIQUE constraint failed: t.id (in execute: INSERT ...)`.
// A code without a name reads `[code 1555]`.
class error : public std::runtime_error {
  public:
    error(std::string backend, std::string sqlstate, int code, std::string message, std::string sql,
          std::string code_name = {})
        : std::runtime_error(compose(backend, sqlstate, code, code_name, message, sql, {})),
          backend_(std::move(backend)),
          sqlstate_(std::move(sqlstate)),
          code_(code),
          code_name_(std::move(code_name)),
          message_(std::move(message)),
          sql_(shorten(std::move(sql))) {}

    [[nodiscard]] const char* what() const noexcept override {
        return text_.empty() ? std::runtime_error::what() : text_.c_str();
    }

    [[nodiscard]] const std::string& backend() const noexcept { return backend_; }
    [[nodiscard]] const std::string& sqlstate() const noexcept { return sqlstate_; }
    [[nodiscard]] int code() const noexcept { return code_; }
    // SQLite's name for code(), as in sqlite3.h; empty for PostgreSQL and client errors.
    [[nodiscard]] std::string_view code_name() const noexcept { return code_name_; }
    [[nodiscard]] const std::string& message() const noexcept { return message_; }
    [[nodiscard]] const std::string& sql() const noexcept { return sql_; }
    // The connection's call that ran the statement ("execute", "query", "query_one",
    // "query_value"); empty when the error did not come through one (connect, commit, a
    // back end's own calls).
    [[nodiscard]] const std::string& operation() const noexcept { return operation_; }

    // Statements longer than this are cut in messages, with "..." at the cut.
    static constexpr std::size_t max_sql_length = 200;

    static std::string shorten(std::string sql) {
        if (sql.size() > max_sql_length) {
            sql.resize(max_sql_length - 3);
            sql += "...";
        }
        return sql;
    }

  private:
    template <class Derived>
    friend class basic_connection;
    friend class rows;

    // Names the call the error came through, the innermost one that names it: what() then
    // reads "(in query_value: SELECT ...)". Left as it was when memory runs out.
    void name_operation(std::string_view operation) noexcept {
        if (!operation_.empty() || sql_.empty()) return;
        try {
            std::string text =
                compose(backend_, sqlstate_, code_, code_name_, message_, sql_, operation);
            operation_ = operation;
            text_ = std::move(text);
        } catch (...) {
            operation_.clear();
        }
    }

    static std::string compose(const std::string& backend, const std::string& sqlstate, int code,
                               const std::string& code_name, const std::string& message,
                               const std::string& sql, std::string_view operation) {
        std::string text = backend;
        if (!sqlstate.empty()) text += " [" + sqlstate + ']';
        if (!code_name.empty()) {
            text += " [" + code_name + ']';
        } else if (code != 0) {
            text += " [code " + std::to_string(code) + ']';
        }
        text += ": " + message;
        if (!sql.empty()) {
            text += " (in";
            if (!operation.empty()) text += ' ' + std::string(operation);
            text += ": " + shorten(sql) + ')';
        }
        return text;
    }

    std::string backend_;
    std::string sqlstate_;
    int code_;
    std::string code_name_;
    std::string message_;
    std::string sql_;
    std::string operation_;
    std::string text_;  // what() once the operation is named
};

// A UNIQUE, FOREIGN KEY, NOT NULL or CHECK constraint was violated (SQLSTATE class 23,
// SQLITE_CONSTRAINT).
class constraint_violation : public error {
  public:
    using error::error;
};

// The transaction cannot be serialized and should be retried (SQLSTATE 40001, 40P01;
// SQLITE_BUSY on commit).
class serialization_failure : public error {
  public:
    using error::error;
};

// The connection could not be made or was lost (SQLSTATE class 08, 57P01-57P03, a closed
// socket under libpq; SQLITE_CANTOPEN).
class connection_error : public error {
  public:
    using error::error;
};

// The connection was lost after COMMIT was sent and before its answer arrived (the link broke,
// the server process was terminated, or the client gave up on a COMMIT whose cancel went
// unanswered): the transaction may or may not have been committed, and only the data can
// tell. Never retried by db::retry, since running the work again could apply it twice. A
// COMMIT sent on a link already known to be broken is a plain connection_error: it never
// reached the server, whose transaction ended with the session.
class commit_outcome_unknown : public connection_error {
  public:
    using connection_error::connection_error;
};

// A value that cannot be read as the type asked for (text read as an integer, NULL read
// into a non-optional, 300 read into an int8_t, no row at all) or a parameter that cannot be
// bound without loss (an unsigned value above INT64_MAX). Raised by the client, so
// sqlstate() is empty and code() 0; the message names the column or the parameter.
class conversion_error : public error {
  public:
    using error::error;
};

}  // namespace db

namespace detail {

inline std::string type_name_of(const std::type_info& type) {
    std::string name = type.name();
#if __has_include(<cxxabi.h>)
    int status = 0;
    std::unique_ptr<char, void (*)(void*)> demangled(
        abi::__cxa_demangle(type.name(), nullptr, nullptr, &status), std::free);
    if (status == 0 && demangled) name = demangled.get();
#endif
    // std::throw_with_nested(E) throws a library type derived from E; name E, as the user did.
    constexpr std::string_view wrapper = "std::_Nested_exception<";
    if (name.starts_with(wrapper) && name.ends_with('>')) {
        name = name.substr(wrapper.size(), name.size() - wrapper.size() - 1);
    }
    return name;
}

inline void describe_into(std::string& out, const std::exception_ptr& e, int depth) {
    if (depth > 0) out += "\n  nested: ";
    if (depth > 32) {
        out += "...";
        return;
    }
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& ex) {
        out += type_name_of(typeid(ex));
        out += ": ";
        out += ex.what();
        if (const auto* nested = dynamic_cast<const std::nested_exception*>(&ex);
            nested != nullptr && nested->nested_ptr()) {
            describe_into(out, nested->nested_ptr(), depth + 1);
        }
    } catch (...) {
        out += "unknown exception (not derived from std::exception)";
    }
}

}  // namespace detail

// Throws `failure` with `pending` nested in it (std::throw_with_nested), or `failure` alone
// when `pending` is null: how a release that fails while an exception is pending reports
// both, our analogue of Python's __context__. what() of the result is failure's.
//
// `failure` is thrown as its static type, so pass an exception made for the purpose (a
// prvalue or a local). A failure caught by reference to a base class goes through
// rethrow_chained instead, which keeps its dynamic type.
template <class Failure>
[[noreturn]] void throw_chained(Failure&& failure, const std::exception_ptr& pending) {
    using thrown = std::remove_cvref_t<Failure>;
    if (!pending) throw thrown(std::forward<Failure>(failure));
    try {
        std::rethrow_exception(pending);
    } catch (...) {
        std::throw_with_nested(thrown(std::forward<Failure>(failure)));
    }
}

namespace detail {

// The library's exception types: the ones rethrow_chained can copy as what they are.
template <class... Types>
struct exception_types {};
using library_exceptions =
    exception_types<protocol_error, closed_error, io_error, network_error, timeout_error,
                    too_many_waiters, leak_error, db::error, db::constraint_violation,
                    db::serialization_failure, db::connection_error, db::commit_outcome_unknown,
                    db::conversion_error>;

template <class... Types>
[[noreturn]] void rethrow_chained_as(exception_types<Types...>, const std::exception_ptr& failure,
                                     const std::exception_ptr& pending) {
    try {
        std::rethrow_exception(failure);
    } catch (const std::exception& caught) {
        // Only an exact match is copied: a copy as a base class would be a different type.
        const std::type_info& type = typeid(caught);
        const auto chain_if = [&]<class T>(std::type_identity<T>) {
            if (type == typeid(T)) throw_chained(T(dynamic_cast<const T&>(caught)), pending);
        };
        (chain_if(std::type_identity<Types>{}), ...);
        throw;
    }
}

}  // namespace detail

// Rethrows `failure` with `pending` nested in it, keeping failure's dynamic type: a
// db::serialization_failure raised by a commit while the block's exception is pending still
// reaches `catch (const db::serialization_failure&)`, with the block's exception nested.
// With a null `pending`, rethrows the failure object itself. C++ can add a nested exception
// only to an object whose type it names, so a failure of a type outside this header's
// hierarchy (a user's exit, std::bad_alloc) propagates as it is, unchained.
[[noreturn]] inline void rethrow_chained(const std::exception_ptr& failure,
                                         const std::exception_ptr& pending) {
    if (!pending) std::rethrow_exception(failure);
    detail::rethrow_chained_as(detail::library_exceptions{}, failure, pending);
}

// "type: what()" for the exception and, one line each, the exceptions nested in it.
// Returns "no exception" for a null pointer. Throws only std::bad_alloc.
[[nodiscard]] inline std::string describe(const std::exception_ptr& e) {
    if (!e) return "no exception";
    std::string out;
    detail::describe_into(out, e, 0);
    return out;
}

}  // namespace ctxmgr
