"""cformat: the two ways text reaches generated files (C, headers, CMake, Make, YAML, Kconfig,
properties files).

Names in a model (nodes, tensors, the graph, doc strings, metadata, the file it came from) are
data: they appear in generated files only inside comments, through `comment_text`.  The library's
prefix (`--name`) is the only name that becomes code, and `check_name` admits only a plain C
identifier that cannot collide with the language, the runtime or the board harness.
A leaf module: no imports from the rest of the compiler except its error type.
"""
import re

from ..errors import TinytrainError

# printable ASCII that is inert inside a C block comment and inside the line comments / free text
# of CMake, Make, YAML, Kconfig and .properties files.  Left out on purpose: '*' (no "/*" or "*/"),
# '\\' (no line splice, no escapes), '?' (no trigraphs), '%' (the escape character), '#', '$', '`'
# and quotes (no expansion or quoting in any of those formats), every control character (no newline
# or CR) and everything outside ASCII.
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-.,:;+=()[]{}<>@!&^~|/")
COMMENT_MAX = 120


def comment_text(text, limit=COMMENT_MAX):
    """Any text -> a single line that is safe inside a generated comment: characters outside the plain
    set become %XX (the bytes of their UTF-8 encoding, as in a URL); more than `limit` characters of
    result are cut and end in '...'."""
    out, n = [], 0
    for ch in str(text):
        piece = ch if ch in _PLAIN else "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
        if n + len(piece) > limit:
            out.append("...")
            break
        out.append(piece)
        n += len(piece)
    return "".join(out)


# C99 + C11 keywords, and C23's new ones (a header compiled as C23 must still parse)
C_KEYWORDS = frozenset("""
auto break case char const continue default do double else enum extern float for goto if inline int long
register restrict return short signed sizeof static struct switch typedef union unsigned void volatile while
_Bool _Complex _Imaginary _Alignas _Alignof _Atomic _Generic _Noreturn _Static_assert _Thread_local
alignas alignof bool constexpr false nullptr static_assert thread_local true typeof typeof_unqual _BitInt
_Decimal32 _Decimal64 _Decimal128
""".split())
# prefixes that belong to others: the runtime (tt_*, TT_*) and the board harness (app_*, APP_*)
TAKEN_PREFIXES = ("tt", "app")
NAME_MAX = 32
_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")


def check_name(name):
    """--name: the prefix of every C symbol of a library.  -> name, or a TinytrainError naming --name.
    Every generated symbol is `<name>_...` (macros `<NAME>_...`), so the name must be a plain ASCII
    identifier, not a keyword, not reserved (no leading underscore, no "__" once '_' is appended), not
    one of TAKEN_PREFIXES, at most NAME_MAX characters."""
    def bad(why):
        return TinytrainError(f"--name '{name}' {why}", field="--name")
    if not isinstance(name, str) or not name:
        raise bad("is empty: give a C identifier such as 'model'")
    if len(name) > NAME_MAX:
        raise bad(f"is {len(name)} characters long: at most {NAME_MAX}")
    if name.startswith("_"):
        raise bad("starts with an underscore: such C identifiers are reserved")
    if not _IDENT.match(name):
        raise bad("is not a C identifier (ASCII letters, digits and '_', starting with a letter)")
    if "__" in name or name.endswith("_"):
        raise bad("contains '__' or ends with '_': the generated symbols would hold '__' (reserved)")
    if name in C_KEYWORDS:
        raise bad("is a C keyword")
    low = name.lower()
    for p in TAKEN_PREFIXES:
        if low == p or low.startswith(p + "_"):
            raise bad(f"collides with the symbols of tinytrain's runtime or board harness ({p}_*, {p.upper()}_*)")
    return name
