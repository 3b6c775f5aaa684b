// How messages and reports name a line of the user's code: append_site.
#pragma once

#include <source_location>
#include <string>

namespace ctxmgr::detail {

// Appends "app.cpp:42 in int main()" (no " in ..." when the compiler names no function).
inline void append_site(std::string& out, const std::source_location& where) {
    out += where.file_name();
    out += ':';
    out += std::to_string(where.line());
    if (*where.function_name() != '\0') {
        out += " in ";
        out += where.function_name();
    }
}

}  // namespace ctxmgr::detail
