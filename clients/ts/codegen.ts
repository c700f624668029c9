// Types for the operations in ../operations/*.graphql, checked against the served schema.
// The documents' text and hashes come from ../operations/manifest.json (the server's trusted documents),
// so the client sends exactly what the server knows; the generated DocumentNodes only carry the types.
import type { CodegenConfig } from "@graphql-codegen/cli";

const config: CodegenConfig = {
  schema: "../../schema.graphql",
  documents: ["../operations/*.graphql"],
  generates: {
    "src/generated/graphql.ts": {
      plugins: ["typescript", "typescript-operations", "typed-document-node"],
      config: {
        enumsAsTypes: true,
        useTypeImports: true,
        avoidOptionals: { field: true, inputValue: false, object: true },
        scalars: { DateTime: "string", JSON: "unknown", Decimal: "string" },
      },
    },
  },
};

export default config;
