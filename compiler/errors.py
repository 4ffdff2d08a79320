"""The one exception tinytrain raises for a user mistake.

Every error names where it happened (file, node, op) and what is wrong, so the
CLI can print it as one line and exit with status 2.  Internal bugs are not
TinytrainErrors: they keep their traceback.
"""


class TinytrainError(Exception):
    def __init__(self, problem, *, file=None, node=None, op=None, field=None):
        p = self._printable
        self.problem = p(problem)
        self.file = None if file is None else p(file)
        self.node = None if node is None else p(node)
        self.op = None if op is None else p(op)
        self.field = None if field is None else p(field)
        super().__init__(self.format())

    @staticmethod
    def _printable(text):
        """One line, whatever the names in a model contain."""
        return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))

    def format(self):
        where = []
        if self.file:
            where.append(self.file)
        if self.node is not None:
            where.append(f"node '{self.node}'")
        if self.op:
            where.append(f"op {self.op}")
        if self.field:
            where.append(f"field '{self.field}'")
        return ": ".join([", ".join(where), self.problem]) if where else self.problem

    def with_context(self, **kw):
        """Fill in context that an inner layer did not know (never overwrite)."""
        for k, v in kw.items():
            if getattr(self, k) is None and v is not None:
                setattr(self, k, self._printable(v))
        self.args = (self.format(),)
        return self
