"""Provider metadata (``get_provider_info``): everything it names imports, and every operator, hook, trigger and
sensor class of the package is in a listed module, so a new module that is not listed fails here."""

from __future__ import annotations

import importlib
import importlib.resources
import importlib.util
import inspect
import json
import pkgutil
from collections.abc import Iterator
from types import ModuleType

import jsonschema
import pytest
from airflow.plugins_manager import AirflowPlugin
from airflow.sdk import BaseHook, BaseOperator
from airflow.triggers.base import BaseTrigger

from jobmon_airflow.get_provider_info import get_provider_info

#: Packages (or modules) that hold the provider's classes, and the Airflow base class of each kind.
KINDS: dict[str, tuple[tuple[str, ...], type]] = {
    "operators": (("jobmon_airflow.operators",), BaseOperator),
    "hooks": (("jobmon_airflow.hooks",), BaseHook),
    "triggers": (("jobmon_airflow.triggers", "jobmon_airflow.sensors"), BaseTrigger),
    "sensors": (("jobmon_airflow.sensors",), BaseOperator),
}


def _listed_modules(kind: str) -> list[str]:
    return [m for entry in get_provider_info().get(kind, []) for m in entry["python-modules"]]


def _walk(name: str) -> Iterator[ModuleType]:
    """The module ``name`` and, for a package, every module below it; nothing when it does not exist."""
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and name.startswith(exc.name):  # the package itself is missing, not a dependency
            return
        raise
    yield module
    for info in pkgutil.walk_packages(getattr(module, "__path__", []), prefix=f"{name}."):
        yield importlib.import_module(info.name)


def _provided_classes(kind: str) -> dict[str, str]:
    """Public leaf classes of ``kind`` defined in the package: {qualified class name: defining module}.

    A class that another class of the package subclasses (``JobmonBaseOperator``, ``_JobmonTrigger``) is a base,
    not something a DAG uses, and needs no listing; so are private ones.
    """
    packages, base = KINDS[kind]
    defined = {
        cls
        for package in packages
        for module in _walk(package)
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, base) and cls.__module__ == module.__name__
    }
    bases = {parent for cls in defined for parent in cls.__mro__[1:]}
    return {
        f"{cls.__module__}.{cls.__qualname__}": cls.__module__
        for cls in defined
        if cls not in bases and not cls.__name__.startswith("_")
    }


def test_provider_info_matches_airflows_schema() -> None:
    schema = json.loads(importlib.resources.files("airflow").joinpath("provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)


def test_provider_info_is_registered_as_the_entry_point() -> None:
    from importlib.metadata import entry_points

    (entry,) = [e for e in entry_points(group="apache_airflow_provider") if e.value.startswith("jobmon_airflow.")]
    assert entry.load()() == get_provider_info()


@pytest.mark.parametrize("kind", ["operators", "hooks", "triggers", "sensors"])
def test_every_listed_module_imports(kind: str) -> None:
    modules = _listed_modules(kind)
    assert len(modules) == len(set(modules)), f"{kind}: a module is listed twice"
    for name in modules:
        importlib.import_module(name)


@pytest.mark.parametrize("kind", ["operators", "hooks", "triggers", "sensors"])
def test_every_class_of_the_package_is_in_a_listed_module(kind: str) -> None:
    listed = set(_listed_modules(kind))
    unlisted = {cls: module for cls, module in _provided_classes(kind).items() if module not in listed}
    assert not unlisted, f"get_provider_info()[{kind!r}] leaves out the module(s) of {sorted(unlisted)}"


def test_the_expected_modules_are_listed() -> None:
    assert set(_listed_modules("operators")) == {"jobmon_airflow.operators.task", "jobmon_airflow.operators.array"}
    assert set(_listed_modules("hooks")) == {
        "jobmon_airflow.hooks.jobmon",
        "jobmon_airflow.hooks.gridengine",
        "jobmon_airflow.hooks.airflow_api",
        "jobmon_airflow.hooks.qpid",
    }
    assert set(_listed_modules("triggers")) == {"jobmon_airflow.triggers", "jobmon_airflow.sensors.workflow"}
    assert _provided_classes("operators").keys() >= {
        "jobmon_airflow.operators.task.JobmonTaskOperator",
        "jobmon_airflow.operators.array.JobmonArrayOperator",
    }
    assert _provided_classes("triggers").keys() >= {
        "jobmon_airflow.triggers.JobmonTaskTrigger",
        "jobmon_airflow.triggers.JobmonArrayTrigger",
    }


def test_no_sensors_entry_without_sensor_modules() -> None:
    info = get_provider_info()
    if importlib.util.find_spec("jobmon_airflow.sensors") is None:
        assert "sensors" not in info
    else:
        assert info.get("sensors"), "jobmon_airflow.sensors exists, so its modules are listed"


def _import_object(path: str) -> object:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_connection_types_name_importable_hooks_of_that_type() -> None:
    hook_modules = set(_listed_modules("hooks"))
    for entry in get_provider_info()["connection-types"]:
        hook = _import_object(entry["hook-class-name"])
        assert inspect.isclass(hook) and issubclass(hook, BaseHook), entry
        assert getattr(hook, "conn_type", None) == entry["connection-type"], entry
        assert hook.__module__ in hook_modules, f"{entry['hook-class-name']} is not in a listed hook module"


def test_plugin_classes_import() -> None:
    for entry in get_provider_info()["plugins"]:
        plugin = _import_object(entry["plugin-class"])
        assert inspect.isclass(plugin) and issubclass(plugin, AirflowPlugin), entry
        assert plugin.name == entry["name"]


def test_integration_names_are_declared() -> None:
    info = get_provider_info()
    declared = {i["integration-name"] for i in info["integrations"]}
    for kind in KINDS:
        for entry in info.get(kind, []):
            assert entry["integration-name"] in declared, (kind, entry)


def test_an_unlisted_operator_module_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above is not vacuous: dropping the array operator's module from the list is reported."""
    import jobmon_airflow.get_provider_info as provider_info

    monkeypatch.setattr(provider_info, "OPERATOR_MODULES", ["jobmon_airflow.operators.task"])
    with pytest.raises(AssertionError, match=r"JobmonArrayOperator"):
        test_every_class_of_the_package_is_in_a_listed_module("operators")


def test_extra_links_are_listed_and_on_every_jobmon_operator() -> None:
    from airflow.sdk import BaseOperatorLink

    listed = get_provider_info()["extra-links"]
    for path in listed:
        link = _import_object(path)
        assert inspect.isclass(link) and issubclass(link, BaseOperatorLink), path
    for operator_path in _provided_classes("operators"):
        operator = _import_object(operator_path)
        on_operator = {f"{type(link).__module__}.{type(link).__qualname__}" for link in operator.operator_extra_links}
        assert on_operator, f"{operator_path} has no operator extra link"
        assert on_operator <= set(listed), f"{operator_path}: {sorted(on_operator - set(listed))} not in extra-links"
