// ctxmgr::sqlite: connections on the SQLite C API.
#include <sqlite3.h>
#include <ctxmgr/release.hpp>
#include <ctxmgr/sqlite.hpp>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "db/recent_statements.hpp"
#include "db/sql_text.hpp"

namespace ctxmgr::sqlite {

namespace {

using db::detail::throw_conversion;

constexpr std::string_view backend_name = "sqlite";

// SQLite's name for a primary or extended result code, as sqlite3.h spells it (SQLite has
// sqlite3_errstr() for the text but nothing for the name); empty for a code this table does
// not know, which a newer SQLite may return: the message then reads `[code N]`.
std::string_view code_name(int code) noexcept {
    struct entry {
        int code;
        std::string_view name;
    };
    static constexpr entry names[] = {
        {SQLITE_OK, "SQLITE_OK"},
        {SQLITE_ERROR, "SQLITE_ERROR"},
        {SQLITE_INTERNAL, "SQLITE_INTERNAL"},
        {SQLITE_PERM, "SQLITE_PERM"},
        {SQLITE_ABORT, "SQLITE_ABORT"},
        {SQLITE_BUSY, "SQLITE_BUSY"},
        {SQLITE_LOCKED, "SQLITE_LOCKED"},
        {SQLITE_NOMEM, "SQLITE_NOMEM"},
        {SQLITE_READONLY, "SQLITE_READONLY"},
        {SQLITE_INTERRUPT, "SQLITE_INTERRUPT"},
        {SQLITE_IOERR, "SQLITE_IOERR"},
        {SQLITE_CORRUPT, "SQLITE_CORRUPT"},
        {SQLITE_NOTFOUND, "SQLITE_NOTFOUND"},
        {SQLITE_FULL, "SQLITE_FULL"},
        {SQLITE_CANTOPEN, "SQLITE_CANTOPEN"},
        {SQLITE_PROTOCOL, "SQLITE_PROTOCOL"},
        {SQLITE_EMPTY, "SQLITE_EMPTY"},
        {SQLITE_SCHEMA, "SQLITE_SCHEMA"},
        {SQLITE_TOOBIG, "SQLITE_TOOBIG"},
        {SQLITE_CONSTRAINT, "SQLITE_CONSTRAINT"},
        {SQLITE_MISMATCH, "SQLITE_MISMATCH"},
        {SQLITE_MISUSE, "SQLITE_MISUSE"},
        {SQLITE_NOLFS, "SQLITE_NOLFS"},
        {SQLITE_AUTH, "SQLITE_AUTH"},
        {SQLITE_FORMAT, "SQLITE_FORMAT"},
        {SQLITE_RANGE, "SQLITE_RANGE"},
        {SQLITE_NOTADB, "SQLITE_NOTADB"},
        {SQLITE_NOTICE, "SQLITE_NOTICE"},
        {SQLITE_WARNING, "SQLITE_WARNING"},
        {SQLITE_ROW, "SQLITE_ROW"},
        {SQLITE_DONE, "SQLITE_DONE"},
        {SQLITE_ERROR_MISSING_COLLSEQ, "SQLITE_ERROR_MISSING_COLLSEQ"},
        {SQLITE_ERROR_RETRY, "SQLITE_ERROR_RETRY"},
        {SQLITE_ERROR_SNAPSHOT, "SQLITE_ERROR_SNAPSHOT"},
        {SQLITE_IOERR_READ, "SQLITE_IOERR_READ"},
        {SQLITE_IOERR_SHORT_READ, "SQLITE_IOERR_SHORT_READ"},
        {SQLITE_IOERR_WRITE, "SQLITE_IOERR_WRITE"},
        {SQLITE_IOERR_FSYNC, "SQLITE_IOERR_FSYNC"},
        {SQLITE_IOERR_DIR_FSYNC, "SQLITE_IOERR_DIR_FSYNC"},
        {SQLITE_IOERR_TRUNCATE, "SQLITE_IOERR_TRUNCATE"},
        {SQLITE_IOERR_FSTAT, "SQLITE_IOERR_FSTAT"},
        {SQLITE_IOERR_UNLOCK, "SQLITE_IOERR_UNLOCK"},
        {SQLITE_IOERR_RDLOCK, "SQLITE_IOERR_RDLOCK"},
        {SQLITE_IOERR_DELETE, "SQLITE_IOERR_DELETE"},
        {SQLITE_IOERR_BLOCKED, "SQLITE_IOERR_BLOCKED"},
        {SQLITE_IOERR_NOMEM, "SQLITE_IOERR_NOMEM"},
        {SQLITE_IOERR_ACCESS, "SQLITE_IOERR_ACCESS"},
        {SQLITE_IOERR_CHECKRESERVEDLOCK, "SQLITE_IOERR_CHECKRESERVEDLOCK"},
        {SQLITE_IOERR_LOCK, "SQLITE_IOERR_LOCK"},
        {SQLITE_IOERR_CLOSE, "SQLITE_IOERR_CLOSE"},
        {SQLITE_IOERR_DIR_CLOSE, "SQLITE_IOERR_DIR_CLOSE"},
        {SQLITE_IOERR_SHMOPEN, "SQLITE_IOERR_SHMOPEN"},
        {SQLITE_IOERR_SHMSIZE, "SQLITE_IOERR_SHMSIZE"},
        {SQLITE_IOERR_SHMLOCK, "SQLITE_IOERR_SHMLOCK"},
        {SQLITE_IOERR_SHMMAP, "SQLITE_IOERR_SHMMAP"},
        {SQLITE_IOERR_SEEK, "SQLITE_IOERR_SEEK"},
        {SQLITE_IOERR_DELETE_NOENT, "SQLITE_IOERR_DELETE_NOENT"},
        {SQLITE_IOERR_MMAP, "SQLITE_IOERR_MMAP"},
        {SQLITE_IOERR_GETTEMPPATH, "SQLITE_IOERR_GETTEMPPATH"},
        {SQLITE_IOERR_CONVPATH, "SQLITE_IOERR_CONVPATH"},
        {SQLITE_IOERR_VNODE, "SQLITE_IOERR_VNODE"},
        {SQLITE_IOERR_AUTH, "SQLITE_IOERR_AUTH"},
        {SQLITE_IOERR_BEGIN_ATOMIC, "SQLITE_IOERR_BEGIN_ATOMIC"},
        {SQLITE_IOERR_COMMIT_ATOMIC, "SQLITE_IOERR_COMMIT_ATOMIC"},
        {SQLITE_IOERR_ROLLBACK_ATOMIC, "SQLITE_IOERR_ROLLBACK_ATOMIC"},
        {SQLITE_IOERR_DATA, "SQLITE_IOERR_DATA"},
        {SQLITE_IOERR_CORRUPTFS, "SQLITE_IOERR_CORRUPTFS"},
        {SQLITE_LOCKED_SHAREDCACHE, "SQLITE_LOCKED_SHAREDCACHE"},
        {SQLITE_LOCKED_VTAB, "SQLITE_LOCKED_VTAB"},
        {SQLITE_BUSY_RECOVERY, "SQLITE_BUSY_RECOVERY"},
        {SQLITE_BUSY_SNAPSHOT, "SQLITE_BUSY_SNAPSHOT"},
        {SQLITE_BUSY_TIMEOUT, "SQLITE_BUSY_TIMEOUT"},
        {SQLITE_CANTOPEN_NOTEMPDIR, "SQLITE_CANTOPEN_NOTEMPDIR"},
        {SQLITE_CANTOPEN_ISDIR, "SQLITE_CANTOPEN_ISDIR"},
        {SQLITE_CANTOPEN_FULLPATH, "SQLITE_CANTOPEN_FULLPATH"},
        {SQLITE_CANTOPEN_CONVPATH, "SQLITE_CANTOPEN_CONVPATH"},
        {SQLITE_CANTOPEN_DIRTYWAL, "SQLITE_CANTOPEN_DIRTYWAL"},
        {SQLITE_CANTOPEN_SYMLINK, "SQLITE_CANTOPEN_SYMLINK"},
        {SQLITE_CORRUPT_VTAB, "SQLITE_CORRUPT_VTAB"},
        {SQLITE_CORRUPT_SEQUENCE, "SQLITE_CORRUPT_SEQUENCE"},
        {SQLITE_CORRUPT_INDEX, "SQLITE_CORRUPT_INDEX"},
        {SQLITE_READONLY_RECOVERY, "SQLITE_READONLY_RECOVERY"},
        {SQLITE_READONLY_CANTLOCK, "SQLITE_READONLY_CANTLOCK"},
        {SQLITE_READONLY_ROLLBACK, "SQLITE_READONLY_ROLLBACK"},
        {SQLITE_READONLY_DBMOVED, "SQLITE_READONLY_DBMOVED"},
        {SQLITE_READONLY_CANTINIT, "SQLITE_READONLY_CANTINIT"},
        {SQLITE_READONLY_DIRECTORY, "SQLITE_READONLY_DIRECTORY"},
        {SQLITE_ABORT_ROLLBACK, "SQLITE_ABORT_ROLLBACK"},
        {SQLITE_CONSTRAINT_CHECK, "SQLITE_CONSTRAINT_CHECK"},
        {SQLITE_CONSTRAINT_COMMITHOOK, "SQLITE_CONSTRAINT_COMMITHOOK"},
        {SQLITE_CONSTRAINT_FOREIGNKEY, "SQLITE_CONSTRAINT_FOREIGNKEY"},
        {SQLITE_CONSTRAINT_FUNCTION, "SQLITE_CONSTRAINT_FUNCTION"},
        {SQLITE_CONSTRAINT_NOTNULL, "SQLITE_CONSTRAINT_NOTNULL"},
        {SQLITE_CONSTRAINT_PRIMARYKEY, "SQLITE_CONSTRAINT_PRIMARYKEY"},
        {SQLITE_CONSTRAINT_TRIGGER, "SQLITE_CONSTRAINT_TRIGGER"},
        {SQLITE_CONSTRAINT_UNIQUE, "SQLITE_CONSTRAINT_UNIQUE"},
        {SQLITE_CONSTRAINT_VTAB, "SQLITE_CONSTRAINT_VTAB"},
        {SQLITE_CONSTRAINT_ROWID, "SQLITE_CONSTRAINT_ROWID"},
        {SQLITE_CONSTRAINT_PINNED, "SQLITE_CONSTRAINT_PINNED"},
        {SQLITE_CONSTRAINT_DATATYPE, "SQLITE_CONSTRAINT_DATATYPE"},
        {SQLITE_NOTICE_RECOVER_WAL, "SQLITE_NOTICE_RECOVER_WAL"},
        {SQLITE_NOTICE_RECOVER_ROLLBACK, "SQLITE_NOTICE_RECOVER_ROLLBACK"},
        {SQLITE_WARNING_AUTOINDEX, "SQLITE_WARNING_AUTOINDEX"},
        {SQLITE_AUTH_USER, "SQLITE_AUTH_USER"},
        {SQLITE_OK_LOAD_PERMANENTLY, "SQLITE_OK_LOAD_PERMANENTLY"},
        {SQLITE_OK_SYMLINK, "SQLITE_OK_SYMLINK"},
    };
    for (const entry& e : names) {
        if (e.code == code) return e.name;
    }
    return {};
}

// Throws the error SQLite reports for `rc` on `handle`, typed by its primary code.
[[noreturn]] void fail(sqlite3* handle, int rc, std::string_view sql,
                       std::string_view context = {}) {
    const int code = handle != nullptr ? sqlite3_extended_errcode(handle) : rc;
    std::string message = handle != nullptr ? sqlite3_errmsg(handle) : sqlite3_errstr(rc);
    if (!context.empty()) message = std::string(context) + ": " + message;
    std::string statement(sql);
    std::string name(code_name(code));
    switch (code & 0xff) {
        case SQLITE_CONSTRAINT:
            throw db::constraint_violation(std::string(backend_name), "", code, std::move(message),
                                           std::move(statement), std::move(name));
        case SQLITE_BUSY:
        case SQLITE_LOCKED:
            throw db::serialization_failure(std::string(backend_name), "", code, std::move(message),
                                            std::move(statement), std::move(name));
        case SQLITE_CANTOPEN:
            throw db::connection_error(std::string(backend_name), "", code, std::move(message),
                                       std::move(statement), std::move(name));
        default:
            throw db::error(std::string(backend_name), "", code, std::move(message),
                            std::move(statement), std::move(name));
    }
}

// A value as SQLite stores it; `text` also holds a number's text form when it was asked for.
struct stored_value {
    int type = SQLITE_NULL;
    std::int64_t integer = 0;
    double real = 0;
    std::string_view text;
};

std::string_view storage_name(int type) {
    switch (type) {
        case SQLITE_INTEGER:
            return "an integer";
        case SQLITE_FLOAT:
            return "a real";
        case SQLITE_TEXT:
            return "text";
        case SQLITE_BLOB:
            return "bytes";
        default:
            return "NULL";
    }
}

[[noreturn]] void wrong_kind(const db::detail::cursor& c, std::size_t column, int type,
                             std::string_view wanted) {
    if (type == SQLITE_NULL) {
        throw_conversion(c, column,
                         "is NULL, which is not " + std::string(wanted) + "; read a std::optional");
    }
    throw_conversion(c, column,
                     "holds " + std::string(storage_name(type)) + ", not " + std::string(wanted));
}

// The conversions of db.hpp's rules, on SQLite's storage classes.
std::int64_t integer_of(const db::detail::cursor& c, std::size_t column, const stored_value& v) {
    if (v.type != SQLITE_INTEGER) wrong_kind(c, column, v.type, "an integer");
    return v.integer;
}

double real_of(const db::detail::cursor& c, std::size_t column, const stored_value& v) {
    if (v.type == SQLITE_FLOAT) return v.real;
    if (v.type == SQLITE_INTEGER) {
        constexpr std::int64_t exact = std::int64_t{1} << std::numeric_limits<double>::digits;
        if (v.integer >= -exact && v.integer <= exact) return static_cast<double>(v.integer);
        throw_conversion(
            c, column,
            "holds " + std::to_string(v.integer) + ", which a double cannot represent exactly");
    }
    wrong_kind(c, column, v.type, "a number");
}

bool boolean_of(const db::detail::cursor& c, std::size_t column, const stored_value& v) {
    if (v.type == SQLITE_INTEGER && (v.integer == 0 || v.integer == 1)) return v.integer == 1;
    if (v.type == SQLITE_INTEGER) {
        throw_conversion(c, column,
                         "holds " + std::to_string(v.integer) + ", not a boolean (0 or 1)");
    }
    wrong_kind(c, column, v.type, "a boolean (0 or 1)");
}

void check_text(const db::detail::cursor& c, std::size_t column, int type) {
    if (type == SQLITE_NULL || type == SQLITE_BLOB) wrong_kind(c, column, type, "text");
}

db::bytes bytes_of(const db::detail::cursor& c, std::size_t column, const stored_value& v) {
    if (v.type != SQLITE_BLOB && v.type != SQLITE_TEXT) wrong_kind(c, column, v.type, "bytes");
    const auto* data = reinterpret_cast<const std::byte*>(v.text.data());
    return db::bytes(data, data + v.text.size());
}

// A row copied out of a statement: what query_one returns.
class snapshot_cursor final : public db::detail::cursor {
  public:
    snapshot_cursor(std::string sql, std::size_t columns) : sql_(std::move(sql)) {
        names_.reserve(columns);
        values_.reserve(columns);
        texts_.reserve(columns);
    }

    void add(std::string name, const stored_value& value) {
        names_.push_back(std::move(name));
        texts_.emplace_back(value.text);
        values_.push_back(value);
        columns_ = values_.size();
    }

    bool next() override { return false; }
    std::string_view name(std::size_t column) const override { return names_[column]; }
    bool is_null(std::size_t column) const override { return values_[column].type == SQLITE_NULL; }
    std::int64_t integer(std::size_t column) const override {
        return integer_of(*this, column, value(column));
    }
    double real(std::size_t column) const override { return real_of(*this, column, value(column)); }
    bool boolean(std::size_t column) const override {
        return boolean_of(*this, column, value(column));
    }
    std::string_view text(std::size_t column) const override {
        check_text(*this, column, values_[column].type);
        return texts_[column];
    }
    db::bytes blob(std::size_t column) const override {
        return bytes_of(*this, column, value(column));
    }
    std::shared_ptr<const cursor> snapshot() const override {
        auto copy = std::make_shared<snapshot_cursor>(sql_, values_.size());
        for (std::size_t i = 0; i < values_.size(); ++i) copy->add(names_[i], value(i));
        return copy;
    }
    std::string_view backend() const noexcept override { return backend_name; }
    std::string_view sql() const noexcept override { return sql_; }
    void release() noexcept override {}

  private:
    stored_value value(std::size_t column) const {
        stored_value v = values_[column];
        v.text = texts_[column];
        return v;
    }

    std::string sql_;
    std::vector<std::string> names_;
    std::vector<stored_value> values_;
    std::vector<std::string> texts_;
};

// Whether a statement that writes (sqlite3_stmt_readonly is false) changes rows, by its
// first keyword: DDL, PRAGMA and transaction control write but change none.
bool is_dml(std::string_view sql) {
    std::size_t i = 0;
    while (i < sql.size()) {
        const char c = sql[i];
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '(') {
            ++i;
        } else if (sql.substr(i, 2) == "--") {
            i = sql.find('\n', i);
        } else if (sql.substr(i, 2) == "/*") {
            const std::size_t end = sql.find("*/", i + 2);
            i = end == std::string_view::npos ? end : end + 2;
        } else {
            break;
        }
    }
    if (i >= sql.size()) return false;
    std::string word;
    for (; i < sql.size() && std::isalpha(static_cast<unsigned char>(sql[i])) != 0; ++i) {
        word += static_cast<char>(std::toupper(static_cast<unsigned char>(sql[i])));
    }
    return word == "INSERT" || word == "UPDATE" || word == "DELETE" || word == "REPLACE" ||
           word == "WITH";  // a CTE that writes can only end in one of those
}

// One prepared statement, and the cursor over its rows while it is leased.
class statement final : public db::detail::cursor {
  public:
    statement(std::string sql, sqlite3_stmt* handle, bool cached)
        : sql_(std::move(sql)),
          handle_(handle),
          parameters_(static_cast<std::size_t>(sqlite3_bind_parameter_count(handle))),
          changes_rows_(sqlite3_stmt_readonly(handle) == 0 && is_dml(sql_)),
          cached_(cached) {
        columns_ = static_cast<std::size_t>(sqlite3_column_count(handle));
    }
    ~statement() override { sqlite3_finalize(handle_); }

    const std::string& key() const noexcept { return sql_; }
    sqlite3_stmt* handle() const noexcept { return handle_; }
    bool busy() const noexcept { return busy_; }
    bool changes_rows() const noexcept { return changes_rows_; }
    void lease() noexcept { busy_ = true; }
    std::uint64_t last_used = 0;

    [[gnu::always_inline]] void bind(std::span<const db::param> params, bool copy);

    bool next() override {
        if (!step()) return false;
        refresh_columns();
        return true;
    }

    // next() without refresh_columns(): for a caller that reads column 0 only, which every
    // row has.
    [[gnu::always_inline]] bool step() {
        const int rc = sqlite3_step(handle_);
        if (rc == SQLITE_ROW) [[likely]] {
            return true;
        }
        if (rc == SQLITE_DONE) {
            // Ends the statement at once, so it holds no read lock while the rows live on.
            sqlite3_reset(handle_);
            return false;
        }
        step_failed(rc);
    }

    // SQLite prepares a statement again after a schema change: SELECT * may have other
    // columns now.
    void refresh_columns() noexcept {
        columns_ = static_cast<std::size_t>(sqlite3_column_count(handle_));
    }

    [[noreturn, gnu::cold, gnu::noinline]] void step_failed(int rc) {
        sqlite3* db = sqlite3_db_handle(handle_);
        try {
            fail(db, rc, sql_);
        } catch (...) {
            sqlite3_reset(handle_);
            throw;
        }
    }

    std::string_view name(std::size_t column) const override {
        const char* name = sqlite3_column_name(handle_, index(column));
        return name != nullptr ? name : "";
    }
    bool is_null(std::size_t column) const override { return type(column) == SQLITE_NULL; }
    std::int64_t integer(std::size_t column) const override {
        sqlite3_value* v = sqlite3_column_value(handle_, index(column));
        if (sqlite3_value_type(v) == SQLITE_INTEGER) [[likely]] {
            return sqlite3_value_int64(v);
        }
        return integer_of(*this, column, value(column));  // throws
    }
    double real(std::size_t column) const override { return real_of(*this, column, value(column)); }
    bool boolean(std::size_t column) const override {
        return boolean_of(*this, column, value(column));
    }
    std::string_view text(std::size_t column) const override {
        check_text(*this, column, type(column));
        return column_text(column);
    }
    db::bytes blob(std::size_t column) const override {
        stored_value v = value(column);
        if (v.type == SQLITE_BLOB || v.type == SQLITE_TEXT) {
            const void* data =
                v.type == SQLITE_BLOB
                    ? sqlite3_column_blob(handle_, index(column))
                    : static_cast<const void*>(sqlite3_column_text(handle_, index(column)));
            v.text = std::string_view(
                static_cast<const char*>(data),
                static_cast<std::size_t>(sqlite3_column_bytes(handle_, index(column))));
        }
        return bytes_of(*this, column, v);
    }
    std::shared_ptr<const cursor> snapshot() const override {
        const std::size_t n = columns();
        auto copy = std::make_shared<snapshot_cursor>(sql_, n);
        for (std::size_t i = 0; i < n; ++i) {
            stored_value v = value(i);
            if (v.type == SQLITE_BLOB) {
                const void* data = sqlite3_column_blob(handle_, index(i));
                v.text = std::string_view(
                    static_cast<const char*>(data),
                    static_cast<std::size_t>(sqlite3_column_bytes(handle_, index(i))));
            } else if (v.type != SQLITE_NULL) {
                v.text = column_text(i);  // numbers too: their text form, for get<std::string>
            }
            copy->add(std::string(name(i)), v);
        }
        return copy;
    }
    std::string_view backend() const noexcept override { return backend_name; }
    std::string_view sql() const noexcept override { return sql_; }
    void release() noexcept override { finish(); }

    // release(), for callers that know the class (a direct, inlined call).
    [[gnu::always_inline]] void finish() noexcept {
        sqlite3_reset(handle_);
        end_lease();
    }
    // finish() for a statement that step() ran to SQLITE_DONE and reset then: resetting it
    // again would cost as much as the first reset, for nothing.
    [[gnu::always_inline]] void end_lease() noexcept {
        busy_ = false;
        if (!cached_) delete this;
    }

  private:
    static int index(std::size_t column) noexcept { return static_cast<int>(column); }
    int type(std::size_t column) const noexcept {
        return sqlite3_column_type(handle_, index(column));
    }
    // One call into the statement (sqlite3_column_value) rather than one per question.
    stored_value value(std::size_t column) const noexcept {
        stored_value v;
        sqlite3_value* value = sqlite3_column_value(handle_, index(column));
        v.type = sqlite3_value_type(value);
        if (v.type == SQLITE_INTEGER) v.integer = sqlite3_value_int64(value);
        if (v.type == SQLITE_FLOAT) v.real = sqlite3_value_double(value);
        return v;
    }
    std::string_view column_text(std::size_t column) const {
        const auto* text = sqlite3_column_text(handle_, index(column));
        if (text == nullptr) {
            if (sqlite3_errcode(sqlite3_db_handle(handle_)) == SQLITE_NOMEM) throw std::bad_alloc();
            return {};
        }
        return std::string_view(
            reinterpret_cast<const char*>(text),
            static_cast<std::size_t>(sqlite3_column_bytes(handle_, index(column))));
    }

    std::string sql_;
    sqlite3_stmt* handle_;
    std::size_t parameters_;
    bool changes_rows_;  // an INSERT, UPDATE, DELETE or REPLACE (perhaps after WITH)
    bool cached_;
    bool busy_ = false;
};

}  // namespace

struct connection::impl {
    sqlite3* handle = nullptr;
    std::size_t capacity = 0;
    std::uint64_t clock = 0;
    std::unordered_map<std::string, std::unique_ptr<statement>, db::detail::string_hash,
                       std::equal_to<>>
        cache;
    struct key_of {
        std::string_view operator()(const statement& s) const noexcept { return s.key(); }
    };
    db::detail::recent_statements<statement, key_of> recent;

    [[gnu::always_inline]] statement* find(std::string_view sql) {
        if (statement* s = recent.find(sql)) return s;
        const auto found = cache.find(sql);
        if (found == cache.end()) return nullptr;
        recent.remember(sql, found->second.get());
        return found->second.get();
    }

    impl() = default;
    impl(const impl&) = delete;
    impl& operator=(const impl&) = delete;
    ~impl() {
        cache.clear();
        if (handle != nullptr) sqlite3_close_v2(handle);
    }

    // Prepares `sql` after rewriting its parameters, checking that it is one statement.
    sqlite3_stmt* prepare(std::string_view sql, bool persistent) {
        db::detail::sql_scan scan;
        const std::string text = db::detail::to_sqlite_parameters(sql, scan);
        if (scan.foreign_at != std::string_view::npos) {
            throw db::error(std::string(backend_name), "", SQLITE_ERROR,
                            "parameters are written $1, $2, ...; found SQLite's `?` at offset " +
                                std::to_string(scan.foreign_at),
                            std::string(sql), std::string(code_name(SQLITE_ERROR)));
        }
        sqlite3_stmt* stmt = nullptr;
        const char* tail = nullptr;
        const int rc = sqlite3_prepare_v3(handle, text.data(), static_cast<int>(text.size()),
                                          persistent ? SQLITE_PREPARE_PERSISTENT : 0, &stmt, &tail);
        if (rc != SQLITE_OK) fail(handle, rc, sql);
        if (stmt == nullptr) {
            throw db::error(std::string(backend_name), "", SQLITE_MISUSE,
                            "no statement in the text", std::string(sql),
                            std::string(code_name(SQLITE_MISUSE)));
        }
        try {
            check_single(stmt, text, tail, sql);
            check_parameter_names(stmt, sql);
        } catch (...) {
            sqlite3_finalize(stmt);
            throw;
        }
        return stmt;
    }

    void check_single(sqlite3_stmt*, const std::string& text, const char* tail,
                      std::string_view sql) {
        const std::size_t rest = static_cast<std::size_t>(tail - text.data());
        if (rest >= text.size()) return;
        // Only comments and blanks may follow: preparing them gives no statement.
        sqlite3_stmt* next = nullptr;
        const int rc =
            sqlite3_prepare_v2(handle, tail, static_cast<int>(text.size() - rest), &next, nullptr);
        if (next == nullptr && rc == SQLITE_OK) return;
        sqlite3_finalize(next);
        throw db::error(std::string(backend_name), "", SQLITE_MISUSE,
                        "more than one statement; use execute_script for several", std::string(sql),
                        std::string(code_name(SQLITE_MISUSE)));
    }

    static void check_parameter_names(sqlite3_stmt* stmt, std::string_view sql) {
        const int count = sqlite3_bind_parameter_count(stmt);
        for (int i = 1; i <= count; ++i) {
            const char* name = sqlite3_bind_parameter_name(stmt, i);
            if (name != nullptr && name[0] != '?') {
                throw db::error(std::string(backend_name), "", SQLITE_ERROR,
                                "parameters are written $1, $2, ...; found " + std::string(name),
                                std::string(sql), std::string(code_name(SQLITE_ERROR)));
            }
        }
    }

    // The statement for `sql`, bound to `params` and leased to the caller: from the cache
    // when it is there and free, otherwise prepared (and cached when there is room).
    // Inlined into connection::run and ::open: one call frame on the way to SQLite.
    [[gnu::always_inline]] statement* acquire(std::string_view sql,
                                              std::span<const db::param> params, bool copy) {
        statement* s = find(sql);
        if (s == nullptr || s->busy()) [[unlikely]]
            s = make(sql, s == nullptr);
        s->last_used = clock;
        s->lease();
        try {
            s->bind(params, copy);
        } catch (...) {
            s->release();
            throw;
        }
        return s;
    }

    // Prepares a statement, cached when there is room. A statement already leased (its rows
    // are still being read) gets a second, uncached one, freed by its release().
    [[gnu::noinline]] statement* make(std::string_view sql, bool absent) {
        ++clock;  // ticks on misses only: hits just copy it, and eviction picks the oldest
        statement* s = nullptr;
        {
            bool cacheable = capacity > 0 && absent;
            if (cacheable && cache.size() >= capacity) cacheable = evict();
            sqlite3_stmt* prepared = prepare(sql, cacheable);
            auto made = std::make_unique<statement>(std::string(sql), prepared, cacheable);
            if (cacheable) {
                s = made.get();
                cache.emplace(s->key(), std::move(made));
            } else {
                s = made.release();  // owned by the lease: released by statement::release
            }
        }
        return s;
    }

    // Finalizes the least recently used statement that is not in use; false if all are.
    bool evict() {
        auto oldest = cache.end();
        for (auto it = cache.begin(); it != cache.end(); ++it) {
            if (!it->second->busy() &&
                (oldest == cache.end() || it->second->last_used < oldest->second->last_used)) {
                oldest = it;
            }
        }
        if (oldest == cache.end()) return false;
        recent.forget(oldest->second.get());
        cache.erase(oldest);
        return true;
    }
};

namespace {

// The failures of bind, out of line so that binding itself stays short.
[[noreturn, gnu::cold, gnu::noinline]] void wrong_count(const std::string& sql, std::size_t given,
                                                        std::size_t expected) {
    throw db::error(std::string(backend_name), "", SQLITE_RANGE,
                    db::detail::wrong_parameter_count(given, expected), sql,
                    std::string(code_name(SQLITE_RANGE)));
}

[[noreturn, gnu::cold, gnu::noinline]] void unbindable(const std::string& sql, sqlite3_stmt* stmt,
                                                       int rc, int at, const db::param& p) {
    if (p.type() == db::param::kind::out_of_range) {
        throw db::conversion_error(std::string(backend_name), "", 0,
                                   "parameter $" + std::to_string(at) + ": " +
                                       std::to_string(p.unsigned_value()) +
                                       " does not fit a 64-bit signed integer",
                                   sql);
    }
    fail(sqlite3_db_handle(stmt), rc, sql, "bind $" + std::to_string(at));
}

}  // namespace

inline void statement::bind(std::span<const db::param> params, bool copy) {
    if (params.size() != parameters_) wrong_count(sql_, params.size(), parameters_);
    const sqlite3_destructor_type lifetime = copy ? SQLITE_TRANSIENT : SQLITE_STATIC;
    int at = 0;
    for (const db::param& p : params) {
        ++at;
        int rc = SQLITE_MISUSE;
        if (p.type() == db::param::kind::integer) [[likely]] {  // the commonest, first
            rc = sqlite3_bind_int64(handle_, at, p.integer());
            if (rc != SQLITE_OK) unbindable(sql_, handle_, rc, at, p);
            continue;
        }
        switch (p.type()) {
            case db::param::kind::integer:
                rc = sqlite3_bind_int64(handle_, at, p.integer());
                break;
            case db::param::kind::text: {
                // A null data pointer would bind NULL: an empty view is still text.
                const char* data = p.view().data() != nullptr ? p.view().data() : "";
                rc = sqlite3_bind_text64(handle_, at, data, p.view().size(), lifetime, SQLITE_UTF8);
                break;
            }
            case db::param::kind::null:
                rc = sqlite3_bind_null(handle_, at);
                break;
            case db::param::kind::real:
                rc = sqlite3_bind_double(handle_, at, p.real());
                break;
            case db::param::kind::boolean:
                rc = sqlite3_bind_int(handle_, at, p.boolean() ? 1 : 0);
                break;
            case db::param::kind::blob:
                rc = p.view().empty() ? sqlite3_bind_zeroblob(handle_, at, 0)
                                      : sqlite3_bind_blob64(handle_, at, p.view().data(),
                                                            p.view().size(), lifetime);
                break;
            case db::param::kind::out_of_range:
                break;
        }
        if (rc != SQLITE_OK) unbindable(sql_, handle_, rc, at, p);
    }
}

// --- connection ------------------------------------------------------------------------

inline connection::impl& connection::live(std::string_view operation) const {
    if (impl_ == nullptr) [[unlikely]]
        throw_closed(operation);
    return *impl_;
}

connection connect(const std::filesystem::path& path, const options& opts,
                   std::source_location where) {
    auto state = std::make_unique<connection::impl>();
    state->capacity = opts.statement_cache_size;
    // The bytes as given: ":memory:" and `file:` URIs pass through unchanged.
    const std::string file = path.native();
    std::string description = '"' + file + '"';
    int flags = SQLITE_OPEN_URI | SQLITE_OPEN_NOMUTEX;
    flags |= opts.read_only ? SQLITE_OPEN_READONLY
                            : SQLITE_OPEN_READWRITE | (opts.create ? SQLITE_OPEN_CREATE : 0);
    const int rc = sqlite3_open_v2(file.c_str(), &state->handle, flags, nullptr);
    if (rc != SQLITE_OK) {
        if (state->handle == nullptr) throw std::bad_alloc();
        fail(state->handle, rc, "", "open " + description);
    }
    sqlite3* db = state->handle;
    sqlite3_extended_result_codes(db, 1);
    const auto timeout = std::clamp<std::chrono::milliseconds::rep>(
        opts.busy_timeout.count(), 0, std::numeric_limits<int>::max());
    sqlite3_busy_timeout(db, static_cast<int>(timeout));
    auto pragma = [&](const char* sql) {
        if (const int code = sqlite3_exec(db, sql, nullptr, nullptr, nullptr); code != SQLITE_OK) {
            fail(db, code, sql, "open " + description);
        }
    };
    pragma(opts.foreign_keys ? "PRAGMA foreign_keys = ON" : "PRAGMA foreign_keys = OFF");
    if (opts.wal && !opts.read_only) {
        // In-memory databases answer "memory": WAL does not apply to them.
        std::string mode;
        char* message = nullptr;
        const int code = sqlite3_exec(
            db, "PRAGMA journal_mode = WAL",
            [](void* out, int, char** values, char**) {
                *static_cast<std::string*>(out) = values[0] != nullptr ? values[0] : "";
                return 0;
            },
            &mode, &message);
        sqlite3_free(message);
        if (code != SQLITE_OK) fail(db, code, "PRAGMA journal_mode = WAL", "open " + description);
        if (mode != "wal" && mode != "memory") {
            throw db::error(std::string(backend_name), "", 0,
                            "open " + description + ": journal_mode stayed " + mode,
                            "PRAGMA journal_mode = WAL");
        }
    }
    return connection(std::move(state), std::move(description), where);
}

connection::connection(std::unique_ptr<impl> state, std::string description,
                       std::source_location where)
    : basic_connection(kind(), std::move(description), where), impl_(std::move(state)) {
}

connection::connection(connection&& other) noexcept = default;

// The base closes this connection first.
connection& connection::operator=(connection&& other) = default;

connection::~connection() {
    if (impl_ == nullptr) return;
    release_in_destructor([&] { close(); }, [&] { return "sqlite connection " + description(); },
                          "sqlite connection", "close in destructor");
}

void connection::close() {
    if (impl_ == nullptr) return;
    std::unique_ptr<impl> state = std::move(impl_);
    mark_closed();
    state->recent.clear();
    state->cache.clear();
    sqlite3* handle = std::exchange(state->handle, nullptr);
    const int rc = sqlite3_close(handle);
    if (rc == SQLITE_OK) return;
    // Statements made through native_handle() are still open: let SQLite close once they
    // are finalized, and say so.
    std::string message = sqlite3_errmsg(handle);
    const int code = sqlite3_extended_errcode(handle);
    sqlite3_close_v2(handle);
    throw db::error(
        std::string(backend_name), "", code,
        "close " + description() + ": " + message + "; it closes when they are finalized", "",
        std::string(code_name(code)));
}

bool connection::is_open() const noexcept {
    return impl_ != nullptr;
}

bool connection::ping() noexcept {
    return is_open();
}

db::transaction_state connection::transaction_state() const noexcept {
    if (impl_ == nullptr) return db::transaction_state::unknown;
    return sqlite3_get_autocommit(impl_->handle) != 0 ? db::transaction_state::idle
                                                      : db::transaction_state::active;
}

bool connection::rollback_any() {
    live("rollback_any");
    forget_transactions();
    if (transaction_state() == db::transaction_state::idle) return false;
    execute_script("ROLLBACK");
    return true;
}

void connection::execute_script(std::string_view sql) {
    impl& state = live("execute_script");
    const std::string text(sql);
    const int rc = sqlite3_exec(state.handle, text.c_str(), nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) fail(state.handle, rc, sql);
}

std::int64_t connection::last_insert_rowid() const {
    return sqlite3_last_insert_rowid(live("last_insert_rowid").handle);
}

::sqlite3* connection::native_handle() const noexcept {
    return impl_ != nullptr ? impl_->handle : nullptr;
}

std::size_t connection::cached_statements() const noexcept {
    return impl_ != nullptr ? impl_->cache.size() : 0;
}

std::int64_t connection::run(std::string_view sql, std::span<const db::param> params) {
    impl& state = live("execute");
    statement* s = state.acquire(sql, params, false);
    struct release_at_end {
        statement* s;
        bool done = false;  // step() ran it to SQLITE_DONE, and reset it
        ~release_at_end() {
            if (done) {
                s->end_lease();
            } else {
                s->finish();
            }
        }
    } guard{s};
    std::int64_t returned = 0;
    while (s->step()) ++returned;
    guard.done = true;
    // sqlite3_changes64 still holds the count of the last INSERT, UPDATE or DELETE after a
    // statement of another kind: ask it only after one of those.
    return s->changes_rows() ? sqlite3_changes64(state.handle) : returned;
}

db::detail::cursor* connection::open(std::string_view sql, std::span<const db::param> params,
                                     bool copy_parameters) {
    return live("query").acquire(sql, params, copy_parameters);
}

void connection::fetch_first(std::string_view sql, std::span<const db::param> params,
                             db::detail::first_value& value) {
    // The statement's class is final: these calls are direct, not through the vtable.
    statement* s = live("query").acquire(sql, params, false);
    struct release_at_end {
        statement* s;
        ~release_at_end() { s->finish(); }
    } guard{s};
    if (!s->step()) return;
    value.row = true;
    // The common case, an integer where one is wanted, without the general path's call.
    if (value.plain_integer) {
        sqlite3_value* v = sqlite3_column_value(s->handle(), 0);
        if (sqlite3_value_type(v) == SQLITE_INTEGER) [[likely]] {
            *static_cast<std::int64_t*>(value.out) = sqlite3_value_int64(v);
            return;
        }
    }
    s->refresh_columns();
    db::detail::read_first(*s, value);  // and its errors
}

void connection::begin(const db::transaction_options& options) {
    execute_script(options.read_only ? "BEGIN DEFERRED" : "BEGIN IMMEDIATE");
}

}  // namespace ctxmgr::sqlite
