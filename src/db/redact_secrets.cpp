// postgres::redact_secrets: a connection string or URI without its passwords, for
// descriptions and messages.
//
// The password is found the way libpq finds it: a string that PQconninfoParse accepts is
// described anew from the parsed options (the server's address first), every secret option
// (dispchar "*": password, sslpassword) shown as ***, so that the rules of quoting, escapes,
// percent-encoding, a password in the query string or an `@` or `?` inside the userinfo are libpq's
// own. A string it rejects cannot log in, but may still hold a password in a form no rule can be
// sure of: everything from where a password could start is hidden.
#include <libpq-fe.h>
#include <ctxmgr/postgres.hpp>

#include <algorithm>
#include <array>
#include <cctype>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace ctxmgr::postgres {

namespace {

constexpr std::string_view hidden = "***";

bool is_space(char c) noexcept {
    return std::isspace(static_cast<unsigned char>(c)) != 0;
}

// The first `word` in `text` from `from` on, in any case; npos when there is none.
std::size_t find_any_case(std::string_view text, std::string_view word, std::size_t from) {
    const auto found = std::search(
        text.begin() + static_cast<std::ptrdiff_t>(std::min(from, text.size())), text.end(),
        word.begin(), word.end(),
        [](char a, char b) { return std::tolower(static_cast<unsigned char>(a)) == b; });
    return found == text.end() ? std::string_view::npos
                               : static_cast<std::size_t>(found - text.begin());
}

// Where a password may start in text libpq could not read: after the first `password`
// (and its `=`), after the `:` of a URI's userinfo, at a URI's query string (its keys may be
// percent-encoded). Everything from there on is hidden.
std::string conservative(std::string_view text) {
    std::size_t cut = text.size();
    if (std::size_t key = find_any_case(text, "password", 0); key != std::string_view::npos) {
        std::size_t end = key + 8;
        while (end < text.size() && is_space(text[end])) ++end;
        if (end < text.size() && text[end] == '=') ++end;
        cut = std::min(cut, end);
    }
    for (std::size_t scheme = text.find("://"); scheme != std::string_view::npos && scheme < cut;
         scheme = text.find("://", scheme + 3)) {
        const std::size_t authority = scheme + 3;
        std::size_t user_end = authority;
        while (user_end < text.size() &&
               std::string_view(":@/?").find(text[user_end]) == std::string_view::npos) {
            ++user_end;
        }
        if (user_end < text.size() && text[user_end] == ':' &&
            text.find('@', user_end) != std::string_view::npos) {
            cut = std::min(cut, user_end + 1);
        }
        if (const std::size_t query = text.find('?', authority); query != std::string_view::npos)
            cut = std::min(cut, query + 1);
    }
    std::string out(text.substr(0, cut));
    if (cut < text.size()) out += hidden;
    return out;
}

// A value as a conninfo string writes it: in single quotes, with `\'` and `\\`, when it is
// empty or holds a space, a quote or a backslash.
void append_value(std::string& out, std::string_view value) {
    const bool plain = !value.empty() && std::none_of(value.begin(), value.end(), [](char c) {
        return is_space(c) || c == '\'' || c == '\\';
    });
    if (plain) {
        out += value;
        return;
    }
    out += '\'';
    for (const char c : value) {
        if (c == '\\' || c == '\'') out += '\\';
        out += c;
    }
    out += '\'';
}

struct options_deleter {
    void operator()(PQconninfoOption* options) const noexcept { PQconninfoFree(options); }
};

}  // namespace

std::string redact_secrets(std::string_view conninfo) {
    char* error = nullptr;
    const std::unique_ptr<PQconninfoOption, options_deleter> parsed(
        PQconninfoParse(std::string(conninfo).c_str(), &error));
    PQfreemem(error);  // it quotes the input: never shown
    if (parsed == nullptr) return conservative(conninfo);
    // Where the server is first, then who logs in, then the rest in libpq's order.
    constexpr std::array<std::string_view, 6> first = {"host", "hostaddr", "port",
                                                       "user", "password", "dbname"};
    std::vector<const PQconninfoOption*> shown;
    for (const PQconninfoOption* option = parsed.get(); option->keyword != nullptr; ++option) {
        if (option->val != nullptr) shown.push_back(option);
    }
    std::stable_sort(shown.begin(), shown.end(), [&](const auto* a, const auto* b) {
        return std::find(first.begin(), first.end(), a->keyword) <
               std::find(first.begin(), first.end(), b->keyword);
    });
    std::string out;
    for (const PQconninfoOption* option : shown) {
        if (!out.empty()) out += ' ';
        out += option->keyword;
        out += '=';
        const std::string_view value = option->val;
        if (option->dispchar != nullptr && option->dispchar[0] == '*' && !value.empty()) {
            out += hidden;
        } else {
            // A value may itself be a connection string (a dbname that libpq would expand).
            append_value(out, conservative(value));
        }
    }
    return out;
}

}  // namespace ctxmgr::postgres
