#!/usr/bin/env python3
"""Tests of check_layers.py on small made-up crates: it must catch what it promises to catch."""
import subprocess
import sys
import tempfile
import textwrap
import unittest
from pathlib import Path

CHECK = Path(__file__).resolve().parent / "check_layers.py"


def check(files, layers):
    """Runs the check on a crate of `files` (path → text) with `layers`; (exit code, output)."""
    with tempfile.TemporaryDirectory() as root:
        src = Path(root) / "src"
        for path, text in files.items():
            (src / path).parent.mkdir(parents=True, exist_ok=True)
            (src / path).write_text(textwrap.dedent(text))
        doc = Path(root) / "architecture.md"
        doc.write_text("# Layers\n\n```layers\n" + "\n".join(layers) + "\n```\n")
        run = subprocess.run([sys.executable, CHECK, src, doc], capture_output=True, text=True)
        return run.returncode, run.stdout


LIB = "mod low;\nmod high;\npub mod host;\n"


class CheckLayers(unittest.TestCase):
    def test_imports_down_the_layers_pass(self):
        code, out = check(
            {
                "lib.rs": LIB,
                "low.rs": "pub struct Low;\n",
                "high.rs": "use crate::low::Low;\npub fn f(_: Low) {}\n",
                "host/mod.rs": "mod a;\nuse a::A;\n",
                "host/a.rs": "pub struct A(crate::high::F);\n",
            },
            ["low.rs", "high.rs", "host/a.rs", "host/mod.rs lib.rs"],
        )
        self.assertEqual(code, 0, out)
        self.assertIn("0 problems", out)

    def test_an_import_up_the_layers_is_named(self):
        code, out = check(
            {"lib.rs": LIB, "low.rs": "use super::high::F;\n", "high.rs": "pub struct F;\n"},
            ["low.rs", "high.rs", "lib.rs"],
        )
        self.assertEqual(code, 1)
        self.assertIn("low.rs (layer 1) uses high.rs (layer 2), a higher layer", out)

    def test_grouped_and_expression_paths_count(self):
        for text in (
            "use crate::{other, high::{F, G}};\n",
            "fn f() { crate::high::go(); }\n",
            "use super::super::high::F;\n",
        ):
            files = {"lib.rs": "mod a;\nmod high;\nmod other;\n", "a/mod.rs": "mod b;\n",
                     "a/b.rs": text, "high.rs": "", "other.rs": ""}
            code, out = check(files, ["a/b.rs other.rs", "high.rs", "a/mod.rs lib.rs"])
            self.assertEqual(code, 1, text)
            self.assertIn("a/b.rs (layer 1) uses high.rs (layer 2)", out, text)

    def test_comments_strings_and_tests_are_not_imports(self):
        code, out = check(
            {
                "lib.rs": LIB,
                "low.rs": """\
                    //! See `crate::high::F`.
                    /* crate::high::F */
                    const S: &str = "crate::high::F";
                    const R: &str = r#"super::high::F"#;
                    #[cfg(test)]
                    mod tests {
                        use crate::high::F;
                    }
                    """,
                "high.rs": "pub struct F;\n",
            },
            ["low.rs", "high.rs", "lib.rs"],
        )
        self.assertEqual(code, 0, out)

    def test_circles_within_a_layer_are_refused(self):
        code, out = check(
            {"lib.rs": LIB, "low.rs": "use crate::high::H;\n", "high.rs": "use crate::low::L;\n"},
            ["low.rs high.rs", "lib.rs"],
        )
        self.assertEqual(code, 1)
        self.assertIn("import circle: high.rs, low.rs", out)

    def test_a_child_importing_its_parent_goes_up(self):
        code, out = check(
            {"lib.rs": "mod host;\n", "host/mod.rs": "mod a;\npub struct T;\n",
             "host/a.rs": "use super::T;\n"},
            ["host/a.rs", "host/mod.rs", "lib.rs"],
        )
        self.assertEqual(code, 1)
        self.assertIn("host/a.rs (layer 1) uses host/mod.rs (layer 2)", out)

    def test_every_file_needs_exactly_one_layer(self):
        code, out = check({"lib.rs": LIB, "low.rs": "", "high.rs": ""}, ["low.rs", "lib.rs"])
        self.assertEqual(code, 1)
        self.assertIn("high.rs: in no layer", out)
        code, out = check({"lib.rs": LIB, "low.rs": "", "high.rs": ""},
                          ["*.rs", "high.rs low.rs lib.rs high.rs", "high.rs"])
        self.assertIn("high.rs: in layers 2, 3", out)
        # An exact name wins over a glob elsewhere.
        code, out = check({"lib.rs": LIB, "low.rs": "", "high.rs": "use crate::low::L;\n"},
                          ["low.rs", "*.rs"])
        self.assertEqual(code, 0, out)


if __name__ == "__main__":
    unittest.main()
