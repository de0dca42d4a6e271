"""The example pack's colour widget on its own page: the widget contract of docs/plugins.md.

The page is served by Playwright's router from the pack's ``web/`` folder (no Loom server), so the
widget is checked apart from the editor; ``test_extensions`` shows it inside the editor.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

EXAMPLE_PACK_WEB = Path(__file__).resolve().parents[2] / "custom_nodes" / "example_pack" / "web"


WIDGET_PAGE = """<!doctype html><body><script type="module">
  const { default: extension } = await import('/extensions/example_pack/color_widget.js');
  window.changes = [];
  const factory = extension.widgets.EXAMPLE_COLOR;
  const widget = factory.create({ node: { id: 4 }, name: 'color', value: '#c08040', options: {},
                                  setValue: (value) => window.changes.push(value) });
  document.body.append(widget.element);
  window.widget = widget;
  window.extensionName = extension.name;
</script></body>"""


def test_color_widget_shows_the_value_and_reports_the_users_pick(browser) -> None:
    """The widget contract of docs/plugins.md, in a real browser: create, setValue on input, update."""
    web = EXAMPLE_PACK_WEB

    def serve(route) -> None:
        path = route.request.url.removeprefix("http://loom.test")
        if path == "/":
            route.fulfill(body=WIDGET_PAGE, content_type="text/html")
        else:
            route.fulfill(
                path=str(web / path.removeprefix("/extensions/example_pack/")), content_type="text/javascript"
            )

    page = browser.new_page()
    try:
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.route("http://loom.test/**", serve)
        page.goto("http://loom.test/")
        page.wait_for_function("window.widget !== undefined")
        assert page.evaluate("extensionName") == "example_pack.color_widget"
        assert page.input_value("input[type=color]") == "#c08040"
        assert page.text_content(".example-pack-color code") == "#c08040"

        page.fill("input[type=color]", "#336699")
        assert page.evaluate("changes") == ["#336699"]
        assert page.text_content(".example-pack-color code") == "#336699"

        page.evaluate("widget.update('#FF0000')")
        assert page.input_value("input[type=color]") == "#ff0000"
        page.evaluate("widget.update('teal')")
        assert page.text_content(".example-pack-color code") == "teal (invalid)"
    finally:
        page.close()
    assert errors == []
