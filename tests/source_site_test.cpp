// How reports name the user's line: the file, the line, and the function without the
// template arguments either compiler appends.
#include <ctxmgr/detail/source_site.hpp>

#include <gtest/gtest.h>

#include <source_location>
#include <string>

namespace {

using ctxmgr::detail::short_function_name;

template <class T, int N>
std::source_location site_in_a_template() {
    return std::source_location::current();
}

TEST(SourceSite, TemplateArgumentsAreLeftOut) {
    EXPECT_EQ(short_function_name("void f(Open) [with Connection = ctxmgr::sqlite::connection; "
                                  "Open = main()::<lambda()>]"),
              "void f(Open)");
    EXPECT_EQ(short_function_name("void f(Open) [Connection = ctxmgr::sqlite::connection, "
                                  "Open = (lambda at a.cpp:3:9)]"),
              "void f(Open)");
    EXPECT_EQ(short_function_name("auto g() [with T = std::array<int, 3>; "
                                  "U = std::map<int, std::vector<int>[2]>]"),
              "auto g()");
}

TEST(SourceSite, OtherNamesAreKeptWhole) {
    EXPECT_EQ(short_function_name("int main()"), "int main()");
    EXPECT_EQ(short_function_name("main()::<lambda(ctxmgr::file&)>"),
              "main()::<lambda(ctxmgr::file&)>");
    EXPECT_EQ(short_function_name("int (*f())[3]"), "int (*f())[3]") << "an array return type";
    EXPECT_EQ(short_function_name("x]"), "x]") << "unbalanced: left as it is";
    EXPECT_EQ(short_function_name(""), "");
}

TEST(SourceSite, AppendSiteNamesTheFileLineAndTheShortFunction) {
    const auto where = site_in_a_template<std::string, 3>();
    std::string text;
    ctxmgr::detail::append_site(text, where);
    EXPECT_EQ(
        text.rfind(std::string(where.file_name()) + ':' + std::to_string(where.line()) + " in ", 0),
        0u)
        << text;
    EXPECT_NE(text.find("site_in_a_template"), std::string::npos) << text;
    EXPECT_EQ(text.find("T = "), std::string::npos) << "no template arguments: " << text;
    EXPECT_EQ(text.back(), ')') << text;
}

}  // namespace
