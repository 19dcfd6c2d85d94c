"""`cinn-sr explore`: explore the SR space of one image in a local web page.

`session` holds what makes an explorer image (`Settings`) and renders it exactly; `server`
serves the page (page.html) and its JSON API around an `Explorer`.
"""
