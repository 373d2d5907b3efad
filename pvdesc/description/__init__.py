"""Reading a VM description: YAML with marks, the schema check, its VMM profile, the model."""
