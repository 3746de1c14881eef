"""The inputs of the reference fixtures: the prompts (chat and raw, short and long) and
the tokenizer corpus. Data only, imported by make_fixtures.py."""
from __future__ import annotations

LONG_DOCUMENT = """\
The history of lighthouses is, in many ways, the history of maritime trade itself. Long before \
the first stone towers were raised, sailors relied on fires lit on hilltops and headlands to \
mark dangerous coasts and the entrances to harbours. The most famous of the ancient lights, the \
Pharos of Alexandria, was completed in the third century BC on a small island at the mouth of \
the harbour. Contemporary descriptions suggest that it stood more than one hundred metres tall, \
and that a fire burned at its summit day and night. It survived, damaged by a series of \
earthquakes, for well over a thousand years before its last remains were used as building \
material for a fortress.

During the Middle Ages, lights were maintained mostly by religious orders and by local \
merchants' guilds, who had a direct interest in the safe arrival of cargo. These lights were \
often little more than a brazier of coal or a cluster of candles behind glass, and their range \
was short. A ship that could see such a light was frequently already in danger. The great \
change came in the eighteenth and nineteenth centuries, when three developments arrived almost \
together: better lamps, better optics, and better construction.

The Argand lamp, introduced in the 1780s, used a hollow circular wick and a glass chimney to \
draw air through the flame, producing a light several times brighter than a candle and with \
far less smoke. Engineers soon paired it with polished metal reflectors shaped as parabolas, \
which gathered the light and sent it out to sea as a beam. Then, in 1822, the French physicist \
Augustin Fresnel presented a new kind of lens. Instead of one thick piece of glass, which would \
have been impossibly heavy, his design used concentric rings of prisms arranged around a \
central lens. The rings bent and reflected the light so that almost all of it left the \
lantern in a narrow horizontal band. A first-order Fresnel lens could be seen from more than \
twenty nautical miles away on a clear night.

Construction improved as well. Building on an exposed rock in the open sea is one of the \
hardest tasks in civil engineering: the work can only proceed at low tide and in calm weather, \
and every stone must resist waves that strike with enormous force. John Smeaton's tower on the \
Eddystone rocks, finished in 1759, used dovetailed granite blocks that locked into each other \
and into the rock itself, and its curved profile, wide at the base and narrow at the top, was \
copied by lighthouse builders for a century. Later towers, such as Bell Rock off the coast of \
Scotland, took years to complete, and the workers lived on a temporary barracks raised on iron \
legs above the waves.

Keeping a light was a demanding job. Keepers trimmed wicks, polished lenses, wound the clockwork \
that turned the optics, and recorded the weather in their logbooks every few hours. On remote \
stations, supply boats might be unable to land for weeks at a time, and families learned to \
store food, water and fuel against long winters. Each light was given its own character, a \
pattern of flashes and eclipses, so that a navigator who saw it could tell which light it was \
by timing it with a watch and checking the published list of lights.

In the twentieth century, electricity replaced oil, and automatic lamp changers, fog signals \
and radio beacons reduced the need for people on site. By the end of the century almost every \
lighthouse in the world had been automated, and satellite navigation had taken over much of \
the work that lights once did alone. Yet many towers are still maintained as aids to \
navigation, and a great number have been preserved as museums, where visitors can climb the \
spiral stairs and stand beside the great glass lenses that once guided ships home."""

PROMPTS = [
    {"name": "short-raw", "kind": "raw", "text": "The capital of France is"},
    {"name": "story-raw", "kind": "raw",
     "text": "Once upon a time, in a small village by the sea, there lived an old fisherman who"},
    {"name": "code-python-raw", "kind": "raw",
     "text": "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    if n < 2:\n        return n\n"},
    {"name": "list-raw", "kind": "raw",
     "text": "Shopping list for pancakes:\n1. Flour\n2. Eggs\n3. Milk\n4."},
    {"name": "numbers-raw", "kind": "raw",
     "text": "The first prime numbers are 2, 3, 5, 7, 11, 13, 17, 19, 23,"},
    {"name": "unicode-raw", "kind": "raw",
     "text": "Voilà un café très crème à Zürich — 東京は日本の首都です。 Привет, мир! 🙂 Das Wetter ist schön, und"},
    {"name": "short-chat", "kind": "chat",
     "messages": [{"role": "user", "content": "What is the capital of France?"}]},
    {"name": "system-multiturn-chat", "kind": "chat",
     "messages": [
         {"role": "system", "content": "You are a concise assistant. Answer in one sentence."},
         {"role": "user", "content": "How many legs does a spider have?"},
         {"role": "assistant", "content": "A spider has eight legs."},
         {"role": "user", "content": "And an insect?"},
     ]},
    {"name": "code-chat", "kind": "chat",
     "messages": [{"role": "user", "content": "Write a Rust function that reverses a string."}]},
    {"name": "long-chat", "kind": "chat",
     "messages": [{"role": "user",
                   "content": "Read the following text and summarize it in three sentences.\n\n" + LONG_DOCUMENT}]},
]

# --------------------------------------------------------------------------
# Tokenizer corpus (written here, deterministic)
# --------------------------------------------------------------------------

def tokenizer_corpus() -> list[str]:
    lines: list[str] = []
    prose = [
        "Hello, world!",
        "hello world",
        "HELLO WORLD",
        "The quick brown fox jumps over the lazy dog.",
        "It was the best of times, it was the worst of times.",
        "A journey of a thousand miles begins with a single step.",
        "She sells sea shells by the sea shore.",
        "In 1969, Neil Armstrong became the first person to walk on the Moon.",
        "Machine learning models are trained on large amounts of data.",
        "Please, don't forget to bring your umbrella; it's going to rain.",
        "Dr. Smith arrived at 10:30 a.m. on Jan. 5th, 2021.",
        "The U.S.A. and the U.K. signed the agreement.",
        "e.g. i.e. etc. vs. Mr. Mrs. Ms.",
        "Wait... what?! Are you serious???",
        "\"Quoted text,\" she said, 'and single quotes.'",
        "(parentheses) [brackets] {braces} <angles>",
        "semi;colon:colon,comma.period!bang?question",
        "hyphen-ated words and em—dashes and en–dashes",
        "snake_case camelCase PascalCase kebab-case SCREAMING_CASE",
        "www.example.com/path/to/page?query=1&other=two#fragment",
        "user@example.org sent an e-mail to admin@example.net",
        "The price is $19.99 (or €17,50 or £15.00).",
        "100% of the 50% discount is 0.5 × price.",
        "Temperature: -3.5°C, humidity 87%, wind 12 km/h NNE.",
        "Once upon a time",
        " Once upon a time",
        "  Once upon a time",
        "once upon a time ",
        "Tokenizers split text into pieces called tokens.",
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.",
        "Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris.",
        "I can't, you won't, they'd've, we're, he's, she'll, I'm, you've, it'd.",
        "I CAN'T, YOU WON'T, THEY'RE, WE'VE, HE'S, I'M, YOU'LL, IT'D.",
        "rock 'n' roll, 'tis, o'clock, ma'am, y'all",
        "The cat's toy; the cats' toys; the children's books.",
        "Don't stop believin'",
        "It's 's 're 've 'm 'll 'd 't",
        "'s's're're",
        "Antidisestablishmentarianism is a long word.",
        "Supercalifragilisticexpialidocious!",
        "pneumonoultramicroscopicsilicovolcanoconiosis",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "abcabcabcabcabcabcabcabc",
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz",
        "The year 2024 had 366 days.",
        "Call me at +1 (555) 123-4567 or 555.987.6543.",
        "IPv4 192.168.0.1 and IPv6 2001:db8::ff00:42:8329",
        "SHA-256: b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "UUID 123e4567-e89b-12d3-a456-426614174000",
        "Version 1.2.3-beta.4+build.567",
        "x = 3.14159265358979323846",
        "1,000,000 and 1.000.000 and 1 000 000",
        "0.000001 1e-6 6.022e23 -273.15",
        "What's the answer to 6 * 7? It's 42.",
        "Chapter IV: The Return of the King",
        "Q: Is this a question?\nA: Yes, it is.",
        "Title\n=====\n\nSome *markdown* with **bold** and `code`.",
        "- item one\n- item two\n  - nested item",
        "1. first\n2. second\n3. third",
        "| col1 | col2 |\n|------|------|\n| a    | b    |",
        "> quoted line\n> another quoted line",
        "---\ntitle: front matter\ntags: [a, b]\n---",
        "<html><body><p class=\"x\">Hi</p></body></html>",
        "<div id='main'>&amp; &lt; &gt; &quot;</div>",
        "{\"key\": \"value\", \"list\": [1, 2, 3], \"nested\": {\"a\": null}}",
        "key1=value1\nkey2 = value2\n[section]",
        "SELECT id, name FROM users WHERE age > 21 ORDER BY name;",
    ]
    lines += prose

    code = [
        "def add(a, b):\n    return a + b\n",
        "import numpy as np\nx = np.zeros((3, 4), dtype=np.float32)",
        "for i in range(10):\n\tprint(i)",
        "class Foo(Bar):\n    def __init__(self, *args, **kwargs):\n        super().__init__(*args, **kwargs)",
        "lambda x: x ** 2 if x > 0 else -x",
        "print(f\"{name!r:>10} = {value:.3f}\")",
        "fn main() {\n    println!(\"Hello, world!\");\n}",
        "let v: Vec<u32> = (0..10).map(|x| x * x).collect();",
        "impl<T: Clone + Send> Iterator for Foo<'a, T> { type Item = &'a T; }",
        "#[derive(Debug, Clone, Copy, PartialEq, Eq)]\npub struct Point { x: i32, y: i32 }",
        "match x { Some(v) => v, None => return Err(e)?, }",
        "unsafe { *ptr.add(1) = 0u8; }",
        "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }",
        "std::vector<std::string> v{\"a\", \"b\"};\nfor (auto& s : v) std::cout << s << std::endl;",
        "template <typename T>\nT max(T a, T b) { return a > b ? a : b; }",
        "__global__ void kernel(float* x, int n) { int i = blockIdx.x * blockDim.x + threadIdx.x; }",
        "function greet(name) {\n  return `Hello, ${name}!`;\n}",
        "const arr = [1, 2, 3].map((x) => x * 2).filter(Boolean);",
        "async function f() { await fetch('/api'); }",
        "if (a === b && c !== d || !e) { x++; y--; z += 1; }",
        "interface User { id: number; name?: string; }",
        "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"hi\")\n}",
        "x := make(map[string]int)\nx[\"a\"]++",
        "public static void main(String[] args) { System.out.println(\"Hi\"); }",
        "#!/bin/bash\nset -euo pipefail\nfor f in *.txt; do echo \"$f\"; done",
        "ls -la | grep '^d' | awk '{print $9}' > dirs.txt 2>&1",
        "git commit -m \"fix: handle empty input\" && git push origin main",
        "SELECT COUNT(*) AS n FROM t GROUP BY k HAVING n > 1;",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL);",
        "(define (square x) (* x x))",
        "main = putStrLn \"Hello\" >> return ()",
        "val xs = List(1, 2, 3).map(_ + 1)",
        "puts [1, 2, 3].map { |x| x * 2 }.inspect",
        "<?php echo $greeting . \" world\"; ?>",
        "local t = {1, 2, 3}\nfor i, v in ipairs(t) do print(i, v) end",
        "x <- c(1, 2, 3); mean(x)",
        "\\begin{equation} E = mc^2 \\end{equation}",
        "$$\\int_0^\\infty e^{-x^2} dx = \\frac{\\sqrt{\\pi}}{2}$$",
        "a+=1;b-=2;c*=3;d/=4;e%=5;f<<=1;g>>=2;h&=3;i|=4;j^=5;",
        "->  =>  ::  ..  ...  ..=  !=  ==  <=  >=  &&  ||  ??",
        "/* block comment */ // line comment # hash comment -- sql comment",
        "0x1F 0b1010 0o777 1_000_000 3.0f32 1e10",
        "    indented with four spaces",
        "\tindented with a tab",
        "\t\tdouble tab\tinline tab",
        "        eight spaces then code();",
        "}\n\n\n\n{",
        "    }\n}\n",
    ]
    lines += code

    unicode = [
        "Café, naïve, résumé, façade, coöperate, jalapeño, piñata.",
        "Ångström, Øresund, Æsir, straße, Größe, Übermut.",
        "Zażółć gęślą jaźń.",
        "Příliš žluťoučký kůň úpěl ďábelské ódy.",
        "Árvíztűrő tükörfúrógép",
        "Ελληνικά: Καλημέρα κόσμε",
        "Русский: Съешь же ещё этих мягких французских булок, да выпей чаю.",
        "Українська: Привіт, світе!",
        "日本語: 今日はいい天気ですね。",
        "カタカナ と ひらがな と 漢字",
        "中文：你好，世界！我爱编程。",
        "繁體中文：學習機器學習很有趣。",
        "한국어: 안녕하세요, 세계!",
        "العربية: مرحبا بالعالم",
        "עברית: שלום עולם",
        "मानक हिन्दी: नमस्ते दुनिया",
        "ภาษาไทย: สวัสดีชาวโลก",
        "Tiếng Việt: Xin chào thế giới",
        "Türkçe: Merhaba dünya, ığüşöç İĞÜŞÖÇ",
        "Emoji: 😀 😂 🥲 👍🏽 ❤️ 🇫🇷 👨‍👩‍👧‍👦",
        "🙂🙂🙂🙂🙂",
        "Math: ∀x ∈ ℝ, ∃y: x² + y² ≤ 1; ∑ᵢ aᵢ = ∫ f(x) dx ≈ π",
        "Arrows → ← ↑ ↓ ⇒ ⇔ and boxes ┌─┐ │ │ └─┘",
        "Currency: ¥ € £ ₹ ₩ ₽ ₿ ¢",
        "Fractions ½ ⅓ ¼ ¾ and superscripts ¹²³",
        "Full-width: ＡＢＣ１２３！？",
        "Zero​width​space and non breaking space",
        "Soft\u00adhyphen and combining e\u0301 vs é",
        "Mixed: hello世界こんにちは123abc",
        "RTL mixed: The word שלום means peace, and مرحبا means hello.",
        "Control-ish: bell\u0007 and escape\u001b[0m done",
        "Replacement char: \ufffd and BOM \ufeffstart",
        "Old Italic 𐌀𐌁𐌂 and musical 𝄞 and math 𝔸𝔹ℂ",
    ]
    lines += unicode

    special = [
        "<|im_start|>user\nHello<|im_end|>",
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
        "<|im_end|>",
        "<|endoftext|>",
        "text before<|endoftext|>text after",
        "<|im_start|><|im_end|><|endoftext|>",
        " <|im_start|> spaced <|im_end|> ",
        "<|im_start|assistant (not a special token)",
        "<im_start> and <|im start|> are not special",
        "<|endoftext|><|endoftext|>",
        "<repo_name>example/repo<file_sep>main.py",
        "<filename>src/lib.rs\n<gh_stars>100",
    ]
    lines += special

    # Digit runs and numbers.
    for n in range(1, 21):
        lines.append("9" * n)
        lines.append(("1234567890" * 3)[:n])
    for n in range(1, 13):
        lines.append("".join(str((i * 7 + 3) % 10) for i in range(n)))
    for v in [0, 7, 42, 100, 999, 1000, 1024, 65535, 123456, 3141592, 2147483647, 18446744073709551615]:
        lines.append(f"The value is {v}.")
    for v in [0.5, 1.25, 3.14159, 2.71828, 1e-9, 6.02e23, -42.0, 100.001]:
        lines.append(f"x={v!r}")
    lines.append("2024-01-31T23:59:59.999Z")
    lines.append("12:34:56 on 07/08/2090")
    lines.append("+-*/=<>()[]{}0123456789")

    # Whitespace runs.
    for k in range(1, 11):
        lines.append("a" + " " * k + "b")
    for k in range(1, 6):
        lines.append("word" + "\t" * k + "word")
    for k in range(1, 7):
        lines.append("line" + "\n" * k + "line")
    for k in range(1, 5):
        lines.append("x" + "\r\n" * k + "y")
    lines += [
        " ", "  ", "   ", "\t", "\n", "\n\n", " \n ", "\t \t", " \t\n\r ",
        "trailing spaces   ", "   leading spaces", "  both  ", "mid  dle   spa    ces",
        "tab\tseparated\tvalues\t1\t2\t3",
        "a \n b \n\n c \n\n\n d",
        "\n\nleading newlines",
        "trailing newlines\n\n",
        "  \n  indented after newline",
        " ' s", " 's", "'s ", "  're",
    ]

    # Punctuation runs.
    lines += [
        "!!!", "???", "...", "!?!?", "--", "---", "----------", "==========", "**bold**", "__init__",
        "~~~", "```python\nprint(1)\n```", "@@ -1,3 +1,4 @@", "<<<<<<< HEAD", ">>>>>>> branch",
        "#####", "$$$", "%%%", "^^^", "&&&", "|||", "\\\\\\", "///", ";;;", ":::", ",,,", "'''", "\"\"\"",
        "¿Qué? ¡Sí!", "«guillemets» „Anführungszeichen“ “curly” ‘quotes’",
        "…ellipsis… and • bullets · middots",
    ]

    # Systematic variants: every prose line with a leading space and lower-cased.
    for s in prose[:40]:
        lines.append(" " + s)
    for s in prose[40:60]:
        lines.append(s.lower())
    for s in unicode[:15]:
        lines.append(s + "\n")

    # Deduplicate, keeping order.
    seen = set()
    out = []
    for s in lines:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


