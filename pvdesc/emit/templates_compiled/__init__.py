"""Every template of ``pvdesc/templates/`` compiled by Jinja2, one module each (generated).

Written by ``scripts/generate-compiled`` (:func:`pvdesc.emit.templating.compiled_source`);
:mod:`pvdesc.emit.templating` uses a module only while its key matches the template's
text, the Jinja2 version and the environment's options.
"""
