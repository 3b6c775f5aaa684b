#!/usr/bin/env python3
"""Checks extract.py on a page made for the purpose: how each kind of block is wrapped,
hidden context, hoisted includes, #line directives, blocks that are not C++ left out, and
the errors it reports (an unknown kind, a block never closed) naming the page and line."""

import os
import subprocess
import sys
import tempfile
import unittest

EXTRACT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "extract.py")

PAGE = """# A page

```sh
echo not C++
```

```cpp
int unmarked = 1;
```

<!-- example: declarations -->
```cpp
#include <vector>
int helper();
```

<!-- example: fragment
std::vector<int> v;
-->
```cpp
v.push_back(helper());
```

<!-- example: async fragment -->
```cpp
co_await asio::post(asio::use_awaitable);
```

- in a list:

    <!-- example: program -->
    ```cpp
    int main() { return 0; }
    ```
"""


def extract(text):
    with tempfile.TemporaryDirectory() as folder:
        page = os.path.join(folder, "page.md")
        with open(page, "w", encoding="utf-8") as f:
            f.write(text)
        examples, programs = (os.path.join(folder, name) for name in ("e.cpp", "p.cpp"))
        result = subprocess.run(
            [sys.executable, EXTRACT, "--page", "a_page", "--source", page, "--label",
             "docs/page.md", "--examples", examples, "--programs", programs],
            capture_output=True, text=True)
        if result.returncode != 0:
            return result, None, None
        with open(examples, encoding="utf-8") as f, open(programs, encoding="utf-8") as g:
            return result, f.read(), g.read()


class Extract(unittest.TestCase):
    def setUp(self):
        result, self.examples, self.programs = extract(PAGE)
        self.assertEqual(result.returncode, 0, result.stderr)

    def test_an_unmarked_block_is_a_fragment(self):
        self.assertIn('#line 8 "docs/page.md"\nint unmarked = 1;', self.examples)
        self.assertIn("inline void fragment_at_line_8() {", self.examples)

    def test_declarations_stay_at_namespace_scope_and_includes_move_to_the_top(self):
        head, _, body = self.examples.partition("namespace docs_examples::a_page {")
        self.assertIn('#line 13 "docs/page.md"\n#include <vector>', head)
        self.assertIn('#line 13 "docs/page.md"\n\nint helper();', body)
        self.assertNotIn("fragment_at_line_13", body)

    def test_hidden_context_comes_first_with_its_own_line(self):
        self.assertIn('inline void fragment_at_line_21() {\n#line 18 "docs/page.md"\n'
                      'std::vector<int> v;\n#line 21 "docs/page.md"\nv.push_back(helper());',
                      self.examples)

    def test_an_async_fragment_is_a_coroutine_and_brings_asio(self):
        self.assertIn("inline asio::awaitable<void> fragment_at_line_26() {", self.examples)
        self.assertIn("co_return;\n}", self.examples)
        self.assertIn("#define CTXMGR_DOCS_EXAMPLES_ASYNC 1", self.examples)

    def test_a_program_in_a_list_is_run_from_the_programs_source(self):
        self.assertNotIn("int main()", self.examples)
        self.assertIn("#define main program_at_line_33", self.programs)
        self.assertIn('#line 33 "docs/page.md"\nint main() { return 0; }', self.programs)
        self.assertIn('run_program("docs/page.md", 33, '
                      "&docs_examples::a_page::program_at_line_33::program_at_line_33)",
                      self.programs)

    def test_other_languages_are_left_out(self):
        self.assertNotIn("echo", self.examples + self.programs)

    def test_an_unknown_kind_is_an_error_naming_the_line(self):
        result, _, _ = extract("text\n\n<!-- example: snippet -->\n```cpp\nint x;\n```\n")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("docs/page.md:3: unknown example kind 'snippet'", result.stderr)

    def test_a_block_never_closed_is_an_error(self):
        result, _, _ = extract("```cpp\nint x;\n")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("docs/page.md:1: code block never closed", result.stderr)


if __name__ == "__main__":
    unittest.main()
