import pytest

from slimbench.registry import Registry, UnknownNameError


def test_register_and_get():
    reg = Registry("widget")
    reg.register("a", 1)

    @reg.register("b")
    class B:
        pass

    assert reg.get("a") == 1 and reg.get("b") is B
    assert reg.names() == ["a", "b"] and "a" in reg


def test_collision_is_an_error():
    reg = Registry("widget")
    reg.register("a", object())
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", object())


def test_unknown_name_suggests_the_closest():
    reg = Registry("method")
    reg.register("magnitude", 1)
    reg.register("wanda", 2)
    with pytest.raises(UnknownNameError) as info:
        reg.get("magnitud")
    message = str(info.value)
    assert message == "unknown method 'magnitud' (known: magnitude, wanda); did you mean 'magnitude'?"
