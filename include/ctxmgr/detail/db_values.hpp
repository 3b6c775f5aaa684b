// ctxmgr/detail/db_values.hpp: internals of <ctxmgr/db.hpp>, not an interface of their own.
//
// What the back ends implement (detail::cursor, a result positioned on one row) and the
// reading of values by db.hpp's rules (read_value for row::get, read_first for
// query_value), kept apart so that db.hpp reads as the interface it is. Include
// <ctxmgr/db.hpp> instead.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "../errors.hpp"

namespace ctxmgr::db {

// The value of a bytea / BLOB column or parameter (documented in db.hpp).
using bytes = std::vector<std::byte>;

class param;

namespace detail {

template <class T>
inline constexpr bool is_optional_v = false;
template <class T>
inline constexpr bool is_optional_v<std::optional<T>> = true;

template <class T>
struct unwrap_optional {
    using type = T;
};
template <class T>
struct unwrap_optional<std::optional<T>> {
    using type = T;
};

template <class T>
inline constexpr bool is_character_v =
    std::is_same_v<T, char> || std::is_same_v<T, wchar_t> || std::is_same_v<T, char8_t> ||
    std::is_same_v<T, char16_t> || std::is_same_v<T, char32_t>;

// An integer a database column can hold: not bool, not a character type.
template <class T>
concept integer = std::integral<T> && !std::same_as<T, bool> && !is_character_v<T>;

template <class T>
concept text_like =
    std::convertible_to<const T&, std::string_view> && !std::same_as<T, std::nullptr_t> &&
    !std::same_as<T, param>;

template <class T>
concept bytes_like = std::convertible_to<const T&, std::span<const std::byte>>;

template <class T>
struct bindable_value
    : std::bool_constant<std::same_as<T, std::nullopt_t> || std::same_as<T, bool> || integer<T> ||
                         std::same_as<T, double> || std::same_as<T, float> || text_like<T> ||
                         bytes_like<T> || std::same_as<T, param>> {};
template <class T>
struct bindable_value<std::optional<T>> : bindable_value<T> {};

}  // namespace detail

namespace detail {

// A back end's result set, positioned on one row at a time. The conversions follow the
// rules in this header's opening comment and throw db::conversion_error.
class cursor {
  public:
    cursor() = default;
    cursor(const cursor&) = delete;
    cursor& operator=(const cursor&) = delete;

    // Moves to the next row (the first, on the first call); false past the last.
    virtual bool next() = 0;
    // Kept in a member by the back end, so that checking a column index costs no call.
    [[nodiscard]] std::size_t columns() const noexcept { return columns_; }
    [[nodiscard]] virtual std::string_view name(std::size_t column) const = 0;
    [[nodiscard]] virtual bool is_null(std::size_t column) const = 0;
    [[nodiscard]] virtual std::int64_t integer(std::size_t column) const = 0;
    [[nodiscard]] virtual double real(std::size_t column) const = 0;
    [[nodiscard]] virtual bool boolean(std::size_t column) const = 0;
    // Valid until the cursor moves or is released.
    [[nodiscard]] virtual std::string_view text(std::size_t column) const = 0;
    [[nodiscard]] virtual bytes blob(std::size_t column) const = 0;
    // The current row, copied or shared, independent of the connection.
    [[nodiscard]] virtual std::shared_ptr<const cursor> snapshot() const = 0;
    [[nodiscard]] virtual std::string_view backend() const noexcept = 0;
    [[nodiscard]] virtual std::string_view sql() const noexcept = 0;
    // Its user is done with it: the back end resets it and takes it back (or frees it).
    virtual void release() noexcept = 0;

  protected:
    virtual ~cursor() = default;
    std::size_t columns_ = 0;
};

// Owns a cursor until release().
class cursor_lease {
  public:
    explicit cursor_lease(cursor* c) noexcept : cursor_(c) {}
    cursor_lease(cursor_lease&& other) noexcept : cursor_(std::exchange(other.cursor_, nullptr)) {}
    cursor_lease& operator=(cursor_lease&& other) noexcept {
        if (this != &other) {
            reset();
            cursor_ = std::exchange(other.cursor_, nullptr);
        }
        return *this;
    }
    ~cursor_lease() { reset(); }

    void reset() noexcept {
        if (cursor_ != nullptr) std::exchange(cursor_, nullptr)->release();
    }
    [[nodiscard]] cursor* get() const noexcept { return cursor_; }
    cursor* operator->() const noexcept { return cursor_; }

  private:
    cursor* cursor_ = nullptr;
};

template <class T>
constexpr std::string_view type_description() noexcept {
    if constexpr (std::same_as<T, bool>) {
        return "a boolean";
    } else if constexpr (std::same_as<T, std::int64_t>) {
        return "a 64-bit integer";
    } else if constexpr (integer<T>) {
        constexpr std::string_view names[2][4] = {
            {"an 8-bit unsigned integer", "a 16-bit unsigned integer", "a 32-bit unsigned integer",
             "a 64-bit unsigned integer"},
            {"an 8-bit integer", "a 16-bit integer", "a 32-bit integer", "a 64-bit integer"}};
        return names[std::is_signed_v<T>][sizeof(T) == 1   ? 0
                                          : sizeof(T) == 2 ? 1
                                          : sizeof(T) == 4 ? 2
                                                           : 3];
    } else if constexpr (std::floating_point<T>) {
        return "a floating-point number";
    } else if constexpr (std::same_as<T, bytes>) {
        return "bytes";
    } else {
        return "text";
    }
}

// "1 parameter", "2 parameters": a count and its noun for messages.
inline std::string count_of(std::size_t n, std::string_view noun) {
    std::string text = std::to_string(n) + ' ' + std::string(noun);
    if (n != 1) text += 's';
    return text;
}

// "bind: 1 parameter given, the statement takes 2", the message of a wrong parameter count.
inline std::string wrong_parameter_count(std::size_t given, std::size_t expected) {
    return "bind: " + count_of(given, "parameter") + " given, the statement takes " +
           std::to_string(expected);
}

// "column 2 \"name\"" for messages.
inline std::string describe_column(const cursor& c, std::size_t column) {
    std::string text = "column " + std::to_string(column);
    if (column < c.columns()) {
        text += " \"";
        text += c.name(column);
        text += '"';
    }
    return text;
}

// Throws db::conversion_error: "<backend>: column 0 \"n\" <problem> (in: <sql>)".
[[noreturn]] inline void throw_conversion(const cursor& c, std::size_t column,
                                          std::string_view problem) {
    throw conversion_error(std::string(c.backend()), "", 0,
                           describe_column(c, column) + ' ' + std::string(problem),
                           std::string(c.sql()));
}

[[noreturn, gnu::cold]] inline void throw_no_column(const cursor& c, std::size_t column) {
    throw std::out_of_range("column " + std::to_string(column) +
                            " does not exist: " + count_of(c.columns(), "column") +
                            " in: " + error::shorten(std::string(c.sql())));
}

// Throws std::out_of_range unless the result has column `column`.
inline void check_column(const cursor& c, std::size_t column) {
    if (column >= c.columns()) throw_no_column(c, column);
}

// The value of `column` as T, by db.hpp's rules (row::get and query_value).
template <class T>
T read_value(const cursor& c, std::size_t column) {
    if constexpr (is_optional_v<T>) {
        if (c.is_null(column)) return std::nullopt;
        return read_value<typename T::value_type>(c, column);
    } else if constexpr (std::same_as<T, bool>) {
        return c.boolean(column);
    } else if constexpr (integer<T>) {
        const std::int64_t value = c.integer(column);
        if constexpr (!std::same_as<T, std::int64_t>) {
            if (!std::in_range<T>(value)) {
                throw_conversion(c, column,
                                 "holds " + std::to_string(value) + ", which is not " +
                                     std::string(type_description<T>()));
            }
        }
        return static_cast<T>(value);
    } else if constexpr (std::floating_point<T>) {
        return static_cast<T>(c.real(column));
    } else if constexpr (std::same_as<T, std::string>) {
        return std::string(c.text(column));
    } else if constexpr (std::same_as<T, std::string_view>) {
        return c.text(column);
    } else {
        static_assert(std::same_as<T, bytes>,
                      "row.get<T>: T must be an integer, bool, double, float, std::string, "
                      "std::string_view, ctxmgr::db::bytes or a std::optional of one");
        return c.blob(column);
    }
}

// What query_value asks of a back end: the first column of the first row, read as
// `request` says into `out` (by read_first, on the back end's own cursor type, so that the
// calls are direct). The request is a constant per type; this is made on every call.
struct first_request {
    enum class kind : unsigned char { integer, real, boolean, text, blob };

    kind wanted;
    bool nullable;     // reading into a std::optional: NULL is a value
    std::int64_t min;  // an integer's range
    std::int64_t max;
    std::string_view description;  // "a 32-bit integer", for messages
};

struct first_value {
    const first_request* request;
    void* out;  // a std::int64_t, double, bool, std::string or bytes, as asked
    // Any std::int64_t, not NULL: what a back end may read without looking at `request`.
    bool plain_integer = false;
    bool row = false;   // set by the back end: there was a row
    bool null = false;  // set by the back end: the value was NULL (only when nullable)
};

// The type query_value<T> reads into before converting to T.
template <class U>
using first_storage_t = std::conditional_t<integer<U>, std::int64_t,
                                           std::conditional_t<std::floating_point<U>, double, U>>;

template <class T>
inline constexpr first_request first_request_for = [] {
    using U = typename unwrap_optional<T>::type;
    first_request r{first_request::kind::integer, is_optional_v<T>,
                    std::numeric_limits<std::int64_t>::min(),
                    std::numeric_limits<std::int64_t>::max(), type_description<U>()};
    if constexpr (std::same_as<U, bool>) {
        r.wanted = first_request::kind::boolean;
    } else if constexpr (integer<U>) {
        if constexpr (std::in_range<std::int64_t>(std::numeric_limits<U>::min())) {
            r.min = static_cast<std::int64_t>(std::numeric_limits<U>::min());
        }
        if constexpr (std::in_range<std::int64_t>(std::numeric_limits<U>::max())) {
            r.max = static_cast<std::int64_t>(std::numeric_limits<U>::max());
        }
    } else if constexpr (std::floating_point<U>) {
        r.wanted = first_request::kind::real;
    } else if constexpr (std::same_as<U, std::string>) {
        r.wanted = first_request::kind::text;
    } else {
        static_assert(std::same_as<U, bytes>,
                      "query_value<T>: T must be an integer, bool, double, float, std::string, "
                      "ctxmgr::db::bytes or a std::optional of one");
        r.wanted = first_request::kind::blob;
    }
    return r;
}();

// query_value<T> for a T that is not optional found no row.
[[noreturn, gnu::cold, gnu::noinline]] inline void throw_no_row(std::string_view backend,
                                                                std::string_view description,
                                                                std::string_view sql) {
    throw conversion_error(std::string(backend), "", 0,
                           "the query returned no row, so no value to read as " +
                               std::string(description) + "; read a std::optional or use query_one",
                           std::string(sql));
}

// Reads column 0 of the row `c` is on into `v`, with read_value's rules and errors.
template <class Cursor>
void read_first(const Cursor& c, first_value& v) {
    const first_request& r = *v.request;
    check_column(c, 0);
    if (r.nullable && c.is_null(0)) {
        v.null = true;
        return;
    }
    switch (r.wanted) {
        case first_request::kind::integer: {
            const std::int64_t value = c.integer(0);
            if (value < r.min || value > r.max) {
                throw_conversion(c, 0,
                                 "holds " + std::to_string(value) + ", which is not " +
                                     std::string(r.description));
            }
            *static_cast<std::int64_t*>(v.out) = value;
            break;
        }
        case first_request::kind::real:
            *static_cast<double*>(v.out) = c.real(0);
            break;
        case first_request::kind::boolean:
            *static_cast<bool*>(v.out) = c.boolean(0);
            break;
        case first_request::kind::text:
            *static_cast<std::string*>(v.out) = c.text(0);
            break;
        case first_request::kind::blob:
            *static_cast<bytes*>(v.out) = c.blob(0);
            break;
    }
}

}  // namespace detail

}  // namespace ctxmgr::db
