// How messages and reports name a line of the user's code: append_site.
#pragma once

#include <source_location>
#include <string>
#include <string_view>

namespace ctxmgr::detail {

// A function's name as std::source_location spells it, without the template arguments that
// GCC (" [with T = ...; U = ...]") and Clang (" [T = ..., U = ...]") append to a
// specialization's signature: in a report, the line says where; a page of template
// arguments says nothing more.
inline std::string_view short_function_name(std::string_view name) noexcept {
    if (name.empty() || name.back() != ']') return name;
    int depth = 0;
    for (std::size_t i = name.size(); i-- > 0;) {
        if (name[i] == ']') {
            ++depth;
        } else if (name[i] == '[' && --depth == 0) {
            return i > 0 && name[i - 1] == ' ' ? name.substr(0, i - 1) : name;
        }
    }
    return name;
}

// Appends "app.cpp:42 in int main()" (no " in ..." when the compiler names no function).
inline void append_site(std::string& out, const std::source_location& where) {
    out += where.file_name();
    out += ':';
    out += std::to_string(where.line());
    if (*where.function_name() != '\0') {
        out += " in ";
        out += short_function_name(where.function_name());
    }
}

}  // namespace ctxmgr::detail
