// redact_secrets: hides passwords in PostgreSQL connection strings and URIs, so that a
// description or an error message can name a connection without giving its password away.
//
// What counts as a password, following libpq's own parsers:
//   - conninfo `password=value`: spaces around `=` allowed; a value in single quotes with
//     `\'` and `\\` escapes, or unquoted up to the next unescaped space. As in libpq,
//     `password= user=x` has the password `user=x`.
//   - the `secret` of `scheme://user:secret@host`, for any scheme: the user ends at the first
//     `:`, the secret at the last `@` before the end of the authority (`/`, `?`, `#`, a
//     space), so an unescaped `@` inside it is hidden too; several hosts are fine.
//   - a `password` parameter after `?` or `&`, its key percent-decoded (`pass%77ord`), its
//     value up to the next `&`, `#` or space.
//   - inside the single-quoted value of another conninfo key (`dbname='host=h password=x'`,
//     which libpq expands), the same rules, re-quoted only if something was hidden.
// The key must be `password` as a whole word, in any case: `passwordfile`, `passfile`,
// `pgpassword`, `db.password`, `my_password` are other keys and are kept. Empty values
// (`password=`, `password=''`, `user:@host`) hide nothing and are kept.
#include <algorithm>
#include <cctype>
#include <string>
#include <string_view>

#include "ctxmgr/tracking.hpp"

namespace ctxmgr {

namespace {

constexpr std::string_view hidden = "***";

bool is_space(char c) noexcept {
    return std::isspace(static_cast<unsigned char>(c)) != 0;
}

bool is_alnum(char c) noexcept {
    return std::isalnum(static_cast<unsigned char>(c)) != 0;
}

// Characters that, just before `password`, make it the end of a longer key.
bool continues_key(char c) noexcept {
    return is_alnum(c) || c == '_' || c == '.' || c == '-' || c == '%';
}

bool is_password_key(std::string_view key) noexcept {
    constexpr std::string_view password = "password";
    return std::equal(key.begin(), key.end(), password.begin(), password.end(), [](char a, char b) {
        return std::tolower(static_cast<unsigned char>(a)) == b;
    });
}

int hex_digit(char c) noexcept {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// %XX sequences decoded; a malformed one is kept as it is.
std::string percent_decode(std::string_view text) {
    std::string out;
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] == '%' && i + 2 < text.size()) {
            const int high = hex_digit(text[i + 1]);
            const int low = hex_digit(text[i + 2]);
            if (high >= 0 && low >= 0) {
                out += static_cast<char>(high * 16 + low);
                i += 2;
                continue;
            }
        }
        out += text[i];
    }
    return out;
}

// Where a conninfo value starting at `begin` ends: after its closing quote, or at the first
// unescaped space. An unterminated quote runs to the end, so it is hidden whole.
std::size_t conninfo_value_end(std::string_view text, std::size_t begin) noexcept {
    std::size_t i = begin;
    if (i < text.size() && text[i] == '\'') {
        for (++i; i < text.size(); ++i) {
            if (text[i] == '\\') {
                ++i;
            } else if (text[i] == '\'') {
                return i + 1;
            }
        }
        return text.size();
    }
    for (; i < text.size() && !is_space(text[i]); ++i) {
        if (text[i] == '\\') ++i;
    }
    return std::min(i, text.size());
}

bool is_empty_value(std::string_view value) noexcept {
    return value.empty() || value == "''";
}

std::string unquote(std::string_view quoted) {
    std::string out;
    const std::size_t end =
        quoted.size() >= 2 && quoted.back() == '\'' ? quoted.size() - 1 : quoted.size();
    for (std::size_t i = 1; i < end; ++i) {
        if (quoted[i] == '\\' && i + 1 < end) ++i;
        out += quoted[i];
    }
    return out;
}

std::string quote(std::string_view value) {
    std::string out = "'";
    for (const char c : value) {
        if (c == '\\' || c == '\'') out += '\\';
        out += c;
    }
    out += '\'';
    return out;
}

std::string redact(std::string_view text);

// `scheme://user:secret@host...` at text[at] == ':': copies the authority with the secret
// hidden and returns where the authority ends.
std::size_t redact_authority(std::string_view text, std::size_t at, std::string& out) {
    const std::size_t begin = at + 3;  // after "://"
    std::size_t end = begin;
    while (end < text.size() && text[end] != '/' && text[end] != '?' && text[end] != '#' &&
           !is_space(text[end])) {
        ++end;
    }
    const std::string_view authority = text.substr(begin, end - begin);
    out += "://";
    const std::size_t user_end = authority.rfind('@');
    const std::size_t colon =
        user_end == std::string_view::npos ? user_end : authority.substr(0, user_end).find(':');
    if (colon == std::string_view::npos || colon + 1 == user_end) {
        out += authority;
    } else {
        out += authority.substr(0, colon + 1);
        out += hidden;
        out += authority.substr(user_end);
    }
    return end;
}

// A URI query parameter starting at text[begin], just after `?` or `&`. Returns where it
// ends if it is a password (copied with the value hidden), 0 otherwise.
std::size_t redact_query_parameter(std::string_view text, std::size_t begin, std::string& out) {
    std::size_t equals = begin;
    while (equals < text.size() && text[equals] != '=' && text[equals] != '&' &&
           text[equals] != '#' && !is_space(text[equals])) {
        ++equals;
    }
    if (equals == text.size() || text[equals] != '=' ||
        !is_password_key(percent_decode(text.substr(begin, equals - begin)))) {
        return 0;
    }
    std::size_t end = equals + 1;
    while (end < text.size() && text[end] != '&' && text[end] != '#' && !is_space(text[end])) {
        ++end;
    }
    out += text.substr(begin, equals + 1 - begin);
    if (end > equals + 1) out += hidden;
    return end;
}

// A conninfo `key = value` starting at text[begin]. A password is copied with its value
// hidden; another key's quoted value is searched for passwords itself. Returns where the
// pair ends in those two cases, 0 otherwise (the caller goes on a character at a time, so
// an unquoted value such as a URI is searched too).
std::size_t redact_conninfo_pair(std::string_view text, std::size_t begin, std::string& out) {
    std::size_t key_end = begin;
    while (key_end < text.size() && (is_alnum(text[key_end]) || text[key_end] == '_')) ++key_end;
    if (key_end == begin) return 0;
    std::size_t value = key_end;
    while (value < text.size() && is_space(text[value])) ++value;
    if (value == text.size() || text[value] != '=') return 0;
    for (++value; value < text.size() && is_space(text[value]);) ++value;

    const bool password = is_password_key(text.substr(begin, key_end - begin));
    if (!password && (value == text.size() || text[value] != '\'')) return 0;
    const std::size_t end = conninfo_value_end(text, value);
    const std::string_view raw = text.substr(value, end - value);
    out += text.substr(begin, value - begin);
    if (password) {
        out += is_empty_value(raw) ? raw : hidden;
    } else {
        const std::string inner = unquote(raw);
        const std::string redacted = redact(inner);
        if (redacted == inner) {
            out += raw;
        } else {
            out += quote(redacted);
        }
    }
    return end;
}

std::string redact(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    std::size_t i = 0;
    while (i < text.size()) {
        if (text.substr(i).starts_with("://")) {
            i = redact_authority(text, i, out);
            continue;
        }
        if (i == 0 || !continues_key(text[i - 1])) {
            const bool in_query = i > 0 && (text[i - 1] == '?' || text[i - 1] == '&');
            const std::size_t end = in_query ? redact_query_parameter(text, i, out)
                                             : redact_conninfo_pair(text, i, out);
            if (end != 0) {
                i = end;
                continue;
            }
        }
        out += text[i++];
    }
    return out;
}

}  // namespace

std::string redact_secrets(std::string_view text) {
    return redact(text);
}

}  // namespace ctxmgr
