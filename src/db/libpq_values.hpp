// The libpq values shared by the synchronous and the asynchronous connections (internal to
// src/): parameters in libpq's form (bound_parameters), results read by db.hpp's rules
// (result_cursor), and what a refused connection says.
#pragma once

#include <libpq-fe.h>

#include <ctxmgr/db.hpp>

#include <array>
#include <bit>
#include <charconv>
#include <cstring>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "db/libpq_support.hpp"

namespace ctxmgr::postgres::detail {

using db::detail::throw_conversion;

// Type OIDs (pg_type.h, stable across versions).
inline constexpr Oid bool_oid = 16, bytea_oid = 17, name_oid = 19, int8_oid = 20, int2_oid = 21,
                     int4_oid = 23, text_oid = 25, oid_oid = 26, float4_oid = 700, float8_oid = 701,
                     unknown_oid = 705, bpchar_oid = 1042, varchar_oid = 1043, numeric_oid = 1700;

inline std::string type_name(Oid type) {
    switch (type) {
        case bool_oid:
            return "boolean";
        case bytea_oid:
            return "bytea";
        case name_oid:
            return "name";
        case int8_oid:
            return "bigint";
        case int2_oid:
            return "smallint";
        case int4_oid:
            return "integer";
        case text_oid:
            return "text";
        case oid_oid:
            return "oid";
        case float4_oid:
            return "real";
        case float8_oid:
            return "double precision";
        case unknown_oid:
            return "unknown";
        case bpchar_oid:
            return "character";
        case varchar_oid:
            return "character varying";
        case numeric_oid:
            return "numeric";
        default:
            return "type oid " + std::to_string(type);
    }
}

inline bool is_integer_type(Oid type) {
    return type == int2_oid || type == int4_oid || type == int8_oid || type == oid_oid;
}
inline bool is_text_type(Oid type) {
    return type == text_oid || type == varchar_oid || type == bpchar_oid || type == name_oid ||
           type == unknown_oid;
}

inline bool succeeded(const PGresult* result) noexcept {
    if (result == nullptr) return false;
    const ExecStatusType status = PQresultStatus(result);
    return status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK || status == PGRES_EMPTY_QUERY;
}

template <class T>
bool parse_whole(std::string_view text, T& value) {
    const char* end = text.data() + text.size();
    const auto [stop, ec] = std::from_chars(text.data(), end, value);
    return ec == std::errc() && stop == end;
}

// A whole number in a NUL-terminated text, as PQgetvalue and PQcmdStatus give it: base 10,
// an optional '-', nothing else; false on overflow and for nullptr. Written out because
// std::from_chars, generic over the base, costs twice as much for the few digits a column or
// a row count has, and needs the length (PQgetlength) first.
[[gnu::always_inline]] inline bool parse_whole(const char* text, std::int64_t& value) noexcept {
    if (text == nullptr) return false;
    const bool negative = *text == '-';
    if (negative) ++text;
    if (*text == '\0') return false;
    std::uint64_t magnitude = 0;
    for (; *text != '\0'; ++text) {
        const unsigned digit = static_cast<unsigned char>(*text) - unsigned{'0'};
        if (digit > 9) return false;
        if (__builtin_mul_overflow(magnitude, std::uint64_t{10}, &magnitude) ||
            __builtin_add_overflow(magnitude, std::uint64_t{digit}, &magnitude)) {
            return false;
        }
    }
    constexpr std::uint64_t most = std::uint64_t{1} << 63;  // the magnitude of INT64_MIN
    if (magnitude > (negative ? most : most - 1)) return false;
    value =
        negative ? static_cast<std::int64_t>(0 - magnitude) : static_cast<std::int64_t>(magnitude);
    return true;
}

// The rows a command's tag reports ("INSERT 0 5", "UPDATE 3", "SELECT 2"; DELETE, MERGE,
// FETCH, MOVE and COPY alike); 0 for a command that reports none ("CREATE TABLE", "BEGIN").
// What PQcmdTuples answers, from the same tag, in half its instructions: it compares the tag
// with each command's name in turn, then the count is parsed again.
inline std::int64_t rows_affected(const PGresult* result) noexcept {
    const char* const tag = PQcmdStatus(const_cast<PGresult*>(result));
    if (tag == nullptr) return 0;
    // What follows `word` (the command and a space) at the start of the tag, or nullptr: one
    // comparison a character, the first that differs the last (a shorter tag differs at its
    // NUL, so nothing past it is read).
    const auto after = [tag]<std::size_t N>(const char(&word)[N]) -> const char* {
        return [&]<std::size_t... I>(std::index_sequence<I...>) {
            return ((tag[I] == word[I]) && ...) ? tag + (N - 1) : nullptr;
        }
        (std::make_index_sequence<N - 1>{});
    };
    const char* count = nullptr;
    switch (tag[0]) {
        case 'I':
            count = after("INSERT ");
            if (count != nullptr) {  // "INSERT oid rows"; the oid is 0 since PostgreSQL 12
                if (count[0] == '0' && count[1] == ' ') {
                    count += 2;
                } else {
                    while (*count != '\0' && *count != ' ') ++count;
                    count = *count == ' ' ? count + 1 : nullptr;
                }
            }
            break;
        case 'U':
            count = after("UPDATE ");
            break;
        case 'D':
            count = after("DELETE ");
            break;
        case 'S':
            count = after("SELECT ");
            break;
        case 'M':
            count = after("MERGE ");
            if (count == nullptr) count = after("MOVE ");
            break;
        case 'F':
            count = after("FETCH ");
            break;
        case 'C':
            count = after("COPY ");
            break;
        default:
            break;
    }
    std::int64_t rows = 0;
    return count != nullptr && parse_whole(count, rows) ? rows : 0;
}

// A text-format result, positioned on one row at a time.
class result_cursor final : public db::detail::cursor {
  public:
    // `home`: where a connection keeps one cursor for reuse; release() goes back there.
    explicit result_cursor(std::unique_ptr<result_cursor>* home) noexcept : home_(home) {}
    ~result_cursor() override { PQclear(result_); }

    // `sql` is copied when the cursor may outlive the caller's text (rows, snapshots).
    void reset(PGresult* result, std::string_view sql, bool snapshot, bool copy_sql) {
        if (result_ != nullptr) PQclear(result_);  // a spare cursor holds none: no call
        result_ = result;
        if (copy_sql) {
            owned_sql_.assign(sql);
            sql_ = owned_sql_;
        } else {
            sql_ = sql;
        }
        row_ = snapshot ? 0 : -1;
        rows_ = PQntuples(result);
        columns_ = static_cast<std::size_t>(PQnfields(result));
        snapshot_ = snapshot;
    }

    bool next() override {
        if (snapshot_ || row_ >= rows_) return false;
        ++row_;
        return row_ < rows_;
    }
    std::string_view name(std::size_t column) const override {
        const char* name = PQfname(result_, index(column));
        return name != nullptr ? name : "";
    }
    bool is_null(std::size_t column) const override {
        return PQgetisnull(result_, row_, index(column)) != 0;
    }
    std::int64_t integer(std::size_t column) const override {
        // A NULL reads as "", from which no integer parses: it is told apart (by value(),
        // which throws for it) only when the parse fails.
        const Oid type = PQftype(result_, index(column));
        std::int64_t out = 0;
        if ((is_integer_type(type) || type == numeric_oid) &&
            parse_whole(PQgetvalue(result_, row_, index(column)), out)) {
            return out;
        }
        wrong(column, type, value(column, "an integer"), "an integer");
    }
    double real(std::size_t column) const override {
        const std::string_view text = value(column, "a number");
        const Oid type = PQftype(result_, index(column));
        if (is_integer_type(type)) {
            const std::int64_t integral = integer(column);
            constexpr std::int64_t exact = std::int64_t{1} << std::numeric_limits<double>::digits;
            if (integral < -exact || integral > exact) {
                throw_conversion(
                    *this, column,
                    "holds " + std::string(text) + ", which a double cannot represent exactly");
            }
            return static_cast<double>(integral);
        }
        double out = 0;
        if ((type == float4_oid || type == float8_oid || type == numeric_oid) &&
            parse_whole(text, out)) {
            return out;
        }
        wrong(column, type, text, "a number");
    }
    bool boolean(std::size_t column) const override {
        const std::string_view text = value(column, "a boolean");
        const Oid type = PQftype(result_, index(column));
        if (type == bool_oid && (text == "t" || text == "f")) return text == "t";
        wrong(column, type, text, "a boolean");
    }
    std::string_view text(std::size_t column) const override {
        const std::string_view text = value(column, "text");
        const Oid type = PQftype(result_, index(column));
        if (type == bytea_oid) wrong(column, type, {}, "text");
        return text;
    }
    db::bytes blob(std::size_t column) const override {
        const std::string_view text = value(column, "bytes");
        const Oid type = PQftype(result_, index(column));
        if (is_text_type(type)) {
            const auto* data = reinterpret_cast<const std::byte*>(text.data());
            return db::bytes(data, data + text.size());
        }
        if (type != bytea_oid) wrong(column, type, text, "bytes");
        std::size_t length = 0;
        unsigned char* raw =
            PQunescapeBytea(reinterpret_cast<const unsigned char*>(text.data()), &length);
        if (raw == nullptr) throw std::bad_alloc();
        const auto* data = reinterpret_cast<const std::byte*>(raw);
        db::bytes out;
        try {
            out.assign(data, data + length);
        } catch (...) {
            PQfreemem(raw);
            throw;
        }
        PQfreemem(raw);
        return out;
    }
    std::shared_ptr<const cursor> snapshot() const override {
        result_ptr copy(PQcopyResult(result_, PG_COPYRES_ATTRS));
        if (copy == nullptr) throw std::bad_alloc();
        const int n = PQnfields(result_);
        for (int c = 0; c < n; ++c) {
            const bool null = PQgetisnull(result_, row_, c) != 0;
            if (PQsetvalue(copy.get(), 0, c, null ? nullptr : PQgetvalue(result_, row_, c),
                           null ? -1 : PQgetlength(result_, row_, c)) == 0) {
                throw std::bad_alloc();
            }
        }
        auto out = std::make_shared<result_cursor>(nullptr);
        out->reset(copy.release(), sql_, true, true);
        return out;
    }
    std::string_view backend() const noexcept override { return backend_name; }
    std::string_view sql() const noexcept override { return sql_; }
    void release() noexcept override {
        PQclear(std::exchange(result_, nullptr));
        if (home_ != nullptr && *home_ == nullptr) {
            home_->reset(this);
        } else {
            delete this;
        }
    }

  private:
    static int index(std::size_t column) noexcept { return static_cast<int>(column); }

    std::string_view value(std::size_t column, std::string_view wanted) const {
        if (is_null(column)) {
            throw_conversion(
                *this, column,
                "is NULL, which is not " + std::string(wanted) + "; read a std::optional");
        }
        return std::string_view(
            PQgetvalue(result_, row_, index(column)),
            static_cast<std::size_t>(PQgetlength(result_, row_, index(column))));
    }

    [[noreturn]] void wrong(std::size_t column, Oid type, std::string_view text,
                            std::string_view wanted) const {
        std::string shown(text.substr(0, 40));
        if (text.size() > 40) shown += "...";
        throw_conversion(*this, column,
                         "holds " + type_name(type) + (text.empty() ? "" : " '" + shown + "'") +
                             ", not " + std::string(wanted));
    }

    std::unique_ptr<result_cursor>* home_;
    PGresult* result_ = nullptr;
    std::string_view sql_;
    std::string owned_sql_;
    int row_ = -1;
    int rows_ = 0;
    bool snapshot_ = false;
};

// The parameters of one call in libpq's form. Kept by the connection and reused, so that a
// call allocates nothing once the buffers have grown.
struct bound_parameters {
    std::vector<Oid> types;
    std::vector<const char*> values;
    std::vector<int> lengths;
    std::vector<int> formats;
    std::vector<std::array<char, 8>> binary;
    std::string text;  // every text parameter, each followed by its NUL

    void bind(std::span<const db::param> params, std::string_view sql) {
        const std::size_t n = params.size();
        if (values.size() != n) {  // every element is written below
            types.resize(n);
            values.resize(n);
            lengths.resize(n);
            formats.resize(n);
            binary.resize(n);
        }
        text.clear();
        std::size_t text_size = 0;
        for (const db::param& p : params) {
            if (p.type() == db::param::kind::text && !p.nul_terminated()) {
                text_size += p.view().size() + 1;
            }
        }
        if (text_size > 0) text.reserve(text_size);  // no reallocation below: pointers stay
        for (std::size_t i = 0; i < n; ++i) {
            const db::param& p = params[i];
            char* const bytes = binary[i].data();
            formats[i] = 1;
            switch (p.type()) {
                case db::param::kind::integer: {
                    // The smallest type that holds the value, as psycopg 3 does: PostgreSQL
                    // casts integer up to bigint implicitly, never down (substr(text, $1)
                    // wants an integer).
                    if (std::in_range<std::int32_t>(p.integer())) {
                        const std::uint32_t big =
                            __builtin_bswap32(static_cast<std::uint32_t>(p.integer()));
                        std::memcpy(bytes, &big, 4);
                        types[i] = int4_oid;
                        lengths[i] = 4;
                    } else {
                        const std::uint64_t big =
                            __builtin_bswap64(static_cast<std::uint64_t>(p.integer()));
                        std::memcpy(bytes, &big, 8);
                        types[i] = int8_oid;
                        lengths[i] = 8;
                    }
                    values[i] = bytes;
                    break;
                }
                case db::param::kind::real: {
                    const std::uint64_t big =
                        __builtin_bswap64(std::bit_cast<std::uint64_t>(p.real()));
                    std::memcpy(bytes, &big, 8);
                    types[i] = float8_oid;
                    values[i] = bytes;
                    lengths[i] = 8;
                    break;
                }
                case db::param::kind::boolean:
                    bytes[0] = p.boolean() ? 1 : 0;
                    types[i] = bool_oid;
                    values[i] = bytes;
                    lengths[i] = 1;
                    break;
                case db::param::kind::blob:
                    types[i] = bytea_oid;
                    values[i] = p.view().data() != nullptr ? p.view().data() : "";
                    lengths[i] = static_cast<int>(p.view().size());
                    break;
                case db::param::kind::text:
                    if (p.view().find('\0') != std::string_view::npos) {
                        throw db::conversion_error(
                            std::string(backend_name), "", 0,
                            "parameter $" + std::to_string(i + 1) +
                                ": text holds a NUL character, which PostgreSQL text cannot; "
                                "bind bytes",
                            std::string(sql));
                    }
                    // Typed `unknown`: the server reads it as whatever the context wants.
                    // Text-format values travel NUL-terminated: copy those that are not.
                    types[i] = 0;
                    lengths[i] = 0;
                    formats[i] = 0;
                    if (p.nul_terminated()) {
                        values[i] = p.view().data();
                    } else {
                        values[i] = text.data() + text.size();
                        text.append(p.view());
                        text.push_back('\0');
                    }
                    break;
                case db::param::kind::null:
                    // A NULL has the type of the optional it came from; an integer one is
                    // typed integer (no value says it needs bigint).
                    switch (p.declared_type()) {
                        case db::param::kind::integer:
                            types[i] = int4_oid;
                            break;
                        case db::param::kind::real:
                            types[i] = float8_oid;
                            break;
                        case db::param::kind::boolean:
                            types[i] = bool_oid;
                            break;
                        case db::param::kind::blob:
                            types[i] = bytea_oid;
                            break;
                        default:
                            types[i] = 0;
                            break;  // text, std::nullopt: the server decides
                    }
                    values[i] = nullptr;
                    lengths[i] = 0;
                    break;
                case db::param::kind::out_of_range:
                    throw db::conversion_error(std::string(backend_name), "", 0,
                                               "parameter $" + std::to_string(i + 1) + ": " +
                                                   std::to_string(p.unsigned_value()) +
                                                   " does not fit a 64-bit signed integer",
                                               std::string(sql));
            }
        }
    }
};

// The SQLSTATE of a refusal that libpq reports only as text (no session, no error fields).
inline std::string refusal_sqlstate(std::string_view message) {
    if (message.find("too many clients") != std::string_view::npos ||
        message.find("remaining connection slots are reserved") != std::string_view::npos) {
        return "53300";
    }
    if (message.find("the database system is starting up") != std::string_view::npos ||
        message.find("the database system is shutting down") != std::string_view::npos ||
        message.find("the database system is in recovery mode") != std::string_view::npos ||
        message.find("not yet accepting connections") != std::string_view::npos) {
        return "57P03";
    }
    if (message.find("password authentication failed") != std::string_view::npos) return "28P01";
    return "";
}

}  // namespace ctxmgr::postgres::detail
