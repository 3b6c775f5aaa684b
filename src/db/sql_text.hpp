// Finding the `$N` parameters of a statement, for both back ends (internal to src/).
//
// A `$N` counts only outside string literals, quoted identifiers and comments, and not
// inside an identifier (`a$1` is an identifier in both dialects). SQLite: '...' (with ''),
// "...", `...`, [...], -- and /* */ comments. PostgreSQL: '...' and E'...' (backslash
// escapes), "...", $tag$...$tag$ dollar quoting, -- and nested /* */ comments.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace ctxmgr::db::detail {

enum class dialect { sqlite, postgresql };

struct sql_scan {
    std::size_t parameters = 0;  // the highest N of a `$N`: the number of parameters to bind
    std::size_t foreign_at = std::string_view::npos;  // where a SQLite `?`, `?N` first is
};

inline bool identifier_char(char c) noexcept {
    const auto u = static_cast<unsigned char>(c);
    return (u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z') || (u >= '0' && u <= '9') || u == '_' ||
           u == '$' || u >= 0x80;
}

inline bool digit(char c) noexcept {
    return c >= '0' && c <= '9';
}

// Calls on_parameter(offset, length, number) for every `$N` of `sql`, in order, and returns
// the scan's summary. Numbers above 999999 are reported as 999999 (no back end accepts
// that many); the back end then refuses the statement.
template <class OnParameter>
sql_scan scan_parameters(std::string_view sql, dialect d, OnParameter&& on_parameter) {
    sql_scan result;
    const std::size_t n = sql.size();
    std::size_t i = 0;
    // Skips a quoted run that starts at i (sql[i] == open) and ends at `close`, where a
    // doubled close character stands for itself. Unterminated: runs to the end.
    auto skip_quoted = [&](char close, bool backslash_escapes) {
        ++i;
        while (i < n) {
            if (backslash_escapes && sql[i] == '\\') {
                i += 2;
                continue;
            }
            if (sql[i] == close) {
                if (i + 1 < n && sql[i + 1] == close && close != ']') {
                    i += 2;
                    continue;
                }
                ++i;
                return;
            }
            ++i;
        }
    };
    while (i < n) {
        const char c = sql[i];
        const bool after_identifier = i > 0 && identifier_char(sql[i - 1]);
        if (c == '\'') {
            const bool escapes = d == dialect::postgresql && i > 0 &&
                                 (sql[i - 1] == 'E' || sql[i - 1] == 'e') &&
                                 (i < 2 || !identifier_char(sql[i - 2]));
            skip_quoted('\'', escapes);
        } else if (c == '"') {
            skip_quoted('"', false);
        } else if (d == dialect::sqlite && c == '`') {
            skip_quoted('`', false);
        } else if (d == dialect::sqlite && c == '[') {
            skip_quoted(']', false);
        } else if (c == '-' && i + 1 < n && sql[i + 1] == '-') {
            const std::size_t end = sql.find('\n', i);
            i = end == std::string_view::npos ? n : end + 1;
        } else if (c == '/' && i + 1 < n && sql[i + 1] == '*') {
            // PostgreSQL nests block comments; SQLite does not.
            int depth = 1;
            i += 2;
            while (i < n && depth > 0) {
                if (sql[i] == '*' && i + 1 < n && sql[i + 1] == '/') {
                    --depth;
                    i += 2;
                } else if (d == dialect::postgresql && sql[i] == '/' && i + 1 < n &&
                           sql[i + 1] == '*') {
                    ++depth;
                    i += 2;
                } else {
                    ++i;
                }
            }
        } else if (c == '$' && !after_identifier && i + 1 < n && digit(sql[i + 1])) {
            std::size_t j = i + 1;
            std::size_t number = 0;
            while (j < n && digit(sql[j])) {
                number =
                    number < 100000 ? number * 10 + static_cast<std::size_t>(sql[j] - '0') : 999999;
                ++j;
            }
            if (number > 999999) number = 999999;
            on_parameter(i, j - i, number);
            if (number > result.parameters) result.parameters = number;
            i = j;
        } else if (c == '$' && !after_identifier && d == dialect::postgresql) {
            // $tag$ ... $tag$ (the tag may be empty); a `$` that opens no tag is an operator.
            std::size_t j = i + 1;
            while (j < n && identifier_char(sql[j]) && sql[j] != '$') ++j;
            if (j < n && sql[j] == '$' && (j == i + 1 || !digit(sql[i + 1]))) {
                const std::string_view tag = sql.substr(i, j - i + 1);
                const std::size_t end = sql.find(tag, j + 1);
                i = end == std::string_view::npos ? n : end + tag.size();
            } else {
                ++i;
            }
        } else if (c == '?' && d == dialect::sqlite) {
            if (result.foreign_at == std::string_view::npos) result.foreign_at = i;
            ++i;
        } else if (identifier_char(c)) {
            // Skip the whole identifier, so that a `$` inside it is not taken for a parameter.
            while (i < n && identifier_char(sql[i])) ++i;
        } else {
            ++i;
        }
    }
    return result;
}

inline sql_scan scan_parameters(std::string_view sql, dialect d) {
    return scan_parameters(sql, d, [](std::size_t, std::size_t, std::size_t) {});
}

// SQLite's spelling of the statement: every `$N` becomes `?N`, which SQLite binds by number
// (same length, so offsets in error messages still match).
inline std::string to_sqlite_parameters(std::string_view sql, sql_scan& scan) {
    std::string out(sql);
    scan = scan_parameters(sql, dialect::sqlite, [&](std::size_t offset, std::size_t, std::size_t) {
        out[offset] = '?';
    });
    return out;
}

}  // namespace ctxmgr::db::detail
