// Parses an AsyncAPI document with the reference parser (every rule of the specification, the
// bindings and the payload schemas, local `$ref`s resolved) and exits non-zero on any error.
// Usage: node check.mjs docs/asyncapi.yaml
import { Parser, fromFile, DiagnosticSeverity } from '@asyncapi/parser';

const path = process.argv[2];
if (!path) {
  console.error('usage: node check.mjs FILE');
  process.exit(2);
}

const names = {
  [DiagnosticSeverity.Error]: 'error',
  [DiagnosticSeverity.Warning]: 'warning',
  [DiagnosticSeverity.Information]: 'info',
  [DiagnosticSeverity.Hint]: 'hint',
};

const parser = new Parser();
const { document, diagnostics } = await fromFile(parser, path).parse();
let errors = 0;
for (const d of diagnostics) {
  if (d.severity === DiagnosticSeverity.Error) errors += 1;
  if (d.severity > DiagnosticSeverity.Warning) continue;
  const where = d.path && d.path.length ? d.path.join('.') : '(document)';
  const line = d.range ? `:${d.range.start.line + 1}` : '';
  console.log(`${names[d.severity]} ${d.code} at ${where} (${path}${line}): ${d.message}`);
}
if (!document || errors > 0) {
  console.error(`${path}: ${errors} error(s); not a valid AsyncAPI document`);
  process.exit(1);
}
const count = (c) => (c ? c.length : 0);
console.log(
  `${path}: valid AsyncAPI ${document.version()} ` +
    `(${count(document.allChannels().all())} channels, ${count(document.allOperations().all())} operations, ` +
    `${count(document.allMessages().all())} messages)`,
);
