"""The catalog's schema, as an ordered list of migrations.

Each entry moves the schema from version ``i`` to ``i + 1``. Never edit an entry that
has shipped: append a new one. ``Catalog`` applies the missing ones, in order, in one
transaction each, when it opens a file.
"""

MIGRATIONS: list[str] = [
    # 1: models, data sets and the cached features that index them.
    """
    CREATE TABLE models (
        name          VARCHAR PRIMARY KEY,
        family        VARCHAR,
        modality      VARCHAR,
        role          VARCHAR,
        source        VARCHAR,
        hub_id        VARCHAR,
        params        BIGINT,
        feature_dim   INTEGER,
        spec          JSON,
        registered_at TIMESTAMP DEFAULT current_timestamp
    );
    CREATE TABLE datasets (
        name          VARCHAR,
        split         VARCHAR,
        fingerprint   VARCHAR NOT NULL,
        modality      VARCHAR,
        num_examples  INTEGER,
        num_classes   INTEGER,
        class_names   JSON,
        source        VARCHAR,
        registered_at TIMESTAMP DEFAULT current_timestamp,
        PRIMARY KEY (name, split)
    );
    CREATE SEQUENCE feature_set_ids;
    CREATE TABLE feature_sets (
        id            BIGINT PRIMARY KEY DEFAULT nextval('feature_set_ids'),
        model         VARCHAR NOT NULL,
        dataset       VARCHAR NOT NULL,
        split         VARCHAR NOT NULL,
        fingerprint   VARCHAR NOT NULL,
        settings_key  VARCHAR NOT NULL,
        settings      JSON,
        num_examples  INTEGER NOT NULL,
        dim           INTEGER NOT NULL,
        dtype         VARCHAR NOT NULL,
        path          VARCHAR NOT NULL,
        size_bytes    BIGINT NOT NULL,
        checksum      VARCHAR NOT NULL,
        seconds       DOUBLE,
        created_at    TIMESTAMP DEFAULT current_timestamp,
        UNIQUE (model, fingerprint, split, settings_key)
    );
    """,
    # 2: teacher rankings, one row per (data set, model, metric) evaluation.
    """
    CREATE SEQUENCE ranking_ids;
    CREATE TABLE rankings (
        id             BIGINT PRIMARY KEY DEFAULT nextval('ranking_ids'),
        dataset        VARCHAR NOT NULL,
        fingerprint    VARCHAR NOT NULL,
        model          VARCHAR NOT NULL,
        metric         VARCHAR NOT NULL,
        score          DOUBLE,
        feature_set_id BIGINT,
        details        JSON,
        created_at     TIMESTAMP DEFAULT current_timestamp
    );
    """,
    # 3: transfer runs, their metric history, and the students exported from them.
    """
    CREATE TABLE runs (
        id             VARCHAR PRIMARY KEY,
        dataset        VARCHAR NOT NULL,
        student        VARCHAR NOT NULL,
        teachers       JSON,
        method         VARCHAR NOT NULL,
        config         JSON,
        status         VARCHAR NOT NULL,
        step           INTEGER DEFAULT 0,
        total_steps    INTEGER,
        checkpoint     VARCHAR,
        test_accuracy  DOUBLE,
        wall_seconds   DOUBLE,
        error          VARCHAR,
        created_at     TIMESTAMP DEFAULT current_timestamp,
        updated_at     TIMESTAMP DEFAULT current_timestamp
    );
    CREATE TABLE run_metrics (
        run_id    VARCHAR NOT NULL,
        step      INTEGER NOT NULL,
        name      VARCHAR NOT NULL,
        value     DOUBLE,
        logged_at TIMESTAMP DEFAULT current_timestamp,
        PRIMARY KEY (run_id, step, name)
    );
    CREATE SEQUENCE export_ids;
    CREATE TABLE exports (
        id         BIGINT PRIMARY KEY DEFAULT nextval('export_ids'),
        run_id     VARCHAR NOT NULL,
        path       VARCHAR NOT NULL,
        opset      INTEGER,
        quantize   VARCHAR,
        manifest   JSON,
        parity     JSON,
        created_at TIMESTAMP DEFAULT current_timestamp
    );
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)
