// ctxmgr/db/param.hpp: a statement's parameters, bound, never spliced into the SQL.
//
// db::param is one parameter: a view of the caller's value (text and bytes are not copied),
// implicit from every bindable type (integers a 64-bit signed integer holds, double, bool,
// text, bytes, std::nullopt and std::optional<T> for NULL), so that a list made at run time
// reads like a call. A value that cannot be bound without loss (an unsigned value above
// INT64_MAX) is refused with db::conversion_error naming the parameter. Part of <ctxmgr/db.hpp>.
//
//   std::vector<ctxmgr::db::param> p{1, "x", std::nullopt};
//   conn.execute("INSERT INTO t VALUES ($1, $2, $3)", p);
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

#include "../detail/db_values.hpp"
#include "../errors.hpp"

namespace ctxmgr::db {

// db::bytes, the value of a bytea / BLOB column or parameter (std::vector<std::byte>), is
// declared with the internals in detail/db_values.hpp.

// T can be bound as a parameter.
template <class T>
concept bindable = detail::bindable_value<std::remove_cvref_t<T>>::value;

// One bound parameter: a view of the caller's value (text and bytes are not copied), valid
// while that value lives. Implicit from every bindable type, so that a run-time list reads
// like a call: std::vector<db::param> p{1, "x", std::nullopt}; conn.execute(sql, p);
class param {
  public:
    enum class kind : unsigned char { null, integer, real, boolean, text, blob, out_of_range };

    // NULL.
    constexpr param() noexcept = default;

    // A null `const char*` binds NULL, as it would in C.
    template <class T>
    requires bindable<T> &&(!std::same_as<std::remove_cvref_t<T>, param>)constexpr param(
        const T& value) noexcept  // NOLINT: implicit on purpose
        : declared_(kind_of<std::remove_cvref_t<T>>()) {
        using U = std::remove_cvref_t<T>;
        if constexpr (detail::is_optional_v<U>) {
            if (value) *this = param(*value);
        } else if constexpr (std::same_as<U, std::nullopt_t>) {
        } else if constexpr (std::same_as<U, bool>) {
            kind_ = kind::boolean;
            boolean_ = value;
        } else if constexpr (detail::integer<U>) {
            kind_ = kind::integer;
            if constexpr (std::is_unsigned_v<U> && sizeof(U) >= sizeof(std::int64_t)) {
                if (value > static_cast<U>(std::numeric_limits<std::int64_t>::max())) {
                    kind_ = kind::out_of_range;
                    unsigned_ = value;
                    return;
                }
            }
            integer_ = static_cast<std::int64_t>(value);
        } else if constexpr (std::floating_point<U>) {
            kind_ = kind::real;
            real_ = static_cast<double>(value);
        } else if constexpr (detail::text_like<U>) {
            if constexpr (std::is_pointer_v<U>) {
                if (value == nullptr) return;
            }
            kind_ = kind::text;
            const std::string_view text(value);
            chars_ = {text.data(), text.size()};
            // A C string, a char array (cut at its first NUL) and std::string end in a NUL:
            // a back end that needs one (libpq's text format) can then skip a copy.
            terminated_ =
                std::is_pointer_v<U> || std::is_array_v<U> || std::same_as<U, std::string>;
        } else {
            kind_ = kind::blob;
            const std::span<const std::byte> data(value);
            chars_ = {reinterpret_cast<const char*>(data.data()), data.size()};
        }
    }

    // What the value is; kind::null for NULL.
    [[nodiscard]] constexpr kind type() const noexcept { return kind_; }
    // For NULL, the kind of the optional it came from (so PostgreSQL can type it);
    // otherwise type(). kind::null for std::nullopt itself.
    [[nodiscard]] constexpr kind declared_type() const noexcept { return declared_; }

    [[nodiscard]] constexpr std::int64_t integer() const noexcept { return integer_; }
    [[nodiscard]] constexpr double real() const noexcept { return real_; }
    [[nodiscard]] constexpr bool boolean() const noexcept { return boolean_; }
    // Text, or the bytes of a bytes value; empty for the other kinds.
    [[nodiscard]] constexpr std::string_view view() const noexcept {
        return kind_ == kind::text || kind_ == kind::blob
                   ? std::string_view(chars_.data, chars_.size)
                   : std::string_view();
    }
    // True when view().data()[view().size()] is a NUL that the caller's value owns.
    [[nodiscard]] constexpr bool nul_terminated() const noexcept { return terminated_; }
    // The value of an unsigned parameter above INT64_MAX (kind::out_of_range): binding it
    // throws db::conversion_error naming the parameter.
    [[nodiscard]] constexpr std::uint64_t unsigned_value() const noexcept { return unsigned_; }

  private:
    template <class U>
    static constexpr kind kind_of() noexcept {
        if constexpr (detail::is_optional_v<U>) {
            return kind_of<typename U::value_type>();
        } else if constexpr (std::same_as<U, std::nullopt_t>) {
            return kind::null;
        } else if constexpr (std::same_as<U, bool>) {
            return kind::boolean;
        } else if constexpr (detail::integer<U>) {
            return kind::integer;
        } else if constexpr (std::floating_point<U>) {
            return kind::real;
        } else if constexpr (detail::text_like<U>) {
            return kind::text;
        } else {
            return kind::blob;
        }
    }

    kind kind_ = kind::null;
    kind declared_ = kind::null;
    bool terminated_ = false;
    struct characters {
        const char* data;
        std::size_t size;
    };
    // One value, so that making an integer parameter writes 8 bytes, not 24.
    union {
        std::int64_t integer_ = 0;
        std::uint64_t unsigned_;
        double real_;
        bool boolean_;
        characters chars_;  // text or bytes
    };
};

}  // namespace ctxmgr::db
