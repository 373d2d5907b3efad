"""Reading a VM description: YAML with marks, the schema check, the model it builds."""
