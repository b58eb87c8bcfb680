"""Projects (tenants): create, find, list."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from neruba_cli.db.ids import new_id
from neruba_cli.db.schema import Project
from neruba_cli.db.unique import add_unique
from neruba_cli.domain import late_events as late_event_policy
from neruba_cli.domain.errors import InvalidInput, NotFound
from neruba_cli.domain.money import RoundingMode
from neruba_cli.domain.tenancy import ProjectSpec
from neruba_cli.domain.timestamps import format_ts

CREDIT_RETURN_POLICIES = ("restore", "keep")


def create_project(
    session: Session, spec: ProjectSpec, *, mode: str = "live", now: datetime
) -> Project:
    """The unique index on slug decides duplicates, so two concurrent creates cannot both win."""
    project = Project(
        id=new_id("proj"),
        slug=spec.slug,
        name=spec.name,
        currency=spec.currency,
        timezone=spec.timezone,
        rounding=spec.rounding,
        created_at=now,
        mode=mode,
        require_key=False,
        late_events=late_event_policy.DEFAULT,
        credit_returns=CREDIT_RETURN_POLICIES[0],
    )
    add_unique(session, project, f"project {spec.slug!r} already exists")
    return project


def get_project(session: Session, slug: str) -> Project:
    project = session.scalar(select(Project).where(Project.slug == slug))
    if project is None:
        raise NotFound(
            f"project {slug!r} does not exist", hint="`neruba project list` shows the projects"
        )
    return project


def list_projects(session: Session, *, only: str | None = None) -> list[Project]:
    query = select(Project).order_by(Project.slug)
    if only is not None:
        query = query.where(Project.slug == only)
    return list(session.scalars(query))


def require_key_slugs(session: Session) -> list[str]:
    return list(session.scalars(select(Project.slug).where(Project.require_key.is_(True))))


def update_project(
    session: Session,
    slug: str,
    *,
    name: str | None = None,
    rounding: RoundingMode | None = None,
    require_key: bool | None = None,
    late_events: str | None = None,
    credit_returns: str | None = None,
) -> Project:
    """Change the settings that can change; currency and mode are fixed at creation."""
    project = get_project(session, slug)
    if late_events is not None:
        project.late_events = late_event_policy.parse_policy(late_events)
    if credit_returns is not None:
        project.credit_returns = validate_credit_returns(credit_returns)
    if name is not None:
        project.name = name.strip() or project.slug
    if rounding is not None:
        project.rounding = rounding
    if require_key is not None:
        project.require_key = require_key
    session.flush()
    return project


def validate_credit_returns(policy: str) -> str:
    """What a credit note does with the credits its invoice consumed (services/settlement)."""
    if policy not in CREDIT_RETURN_POLICIES:
        raise InvalidInput(
            f"credit returns: {policy!r} is not a policy",
            hint="use restore (credits go back to their grants first) or keep",
        )
    return policy


def spec_of(project: Project) -> ProjectSpec:
    rounding: RoundingMode = "half_up" if project.rounding == "half_up" else "half_even"
    return ProjectSpec(
        slug=project.slug,
        name=project.name,
        currency=project.currency,
        timezone=project.timezone,
        rounding=rounding,
    )


def to_dict(project: Project) -> dict[str, Any]:
    return {
        "id": project.id,
        "slug": project.slug,
        "name": project.name,
        "currency": project.currency,
        "timezone": project.timezone,
        "rounding": project.rounding,
        "mode": project.mode,
        "require_key": project.require_key,
        "late_events": project.late_events,
        "credit_returns": project.credit_returns,
        "created_at": format_ts(project.created_at),
    }
