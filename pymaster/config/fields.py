"""The typed options of a Config: one attribute per option of the table.

Generated from `pymaster/config/table.py` by `python -m pymaster.config --fields` (into a temporary file, then moved here);
do not edit by hand (a test checks that it is current).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Options:
    """Every option, with the type and default the table declares."""

    ini: list[str] = field(default_factory=list)
    strict: bool = False
    show_config: bool = False
    help: bool = False
    version: bool = False
    set: list[str] = field(default_factory=list)
    set_placeholder: list[str] = field(default_factory=list)
    socket: list[str] = field(default_factory=list)
    http_socket: list[str] = field(default_factory=list)
    listen: int = 100
    buffer_size: int = 4096
    chmod_socket: str | None = None
    socket_timeout: int = 4
    uid: str | None = None
    gid: str | None = None
    http_keepalive: int = 5
    limit_post: int = 1073741824
    post_buffering: int = 0
    header_timeout: int = 10
    max_idle_connections: int = 0
    max_vars: int = 64
    thunder_lock: bool = False
    protocol: str = "uwsgi"
    http11_socket: list[str] = field(default_factory=list)
    chown_socket: str | None = None
    close_on_exec: bool = False
    close_on_exec2: bool = False
    wsgi_file: str | None = None
    module: str | None = None
    callable: str = "application"
    pythonpath: list[str] = field(default_factory=list)
    home: str | None = None
    psgi: str | None = None
    perl_local_lib: str | None = None
    plackup_opt: list[str] = field(default_factory=list)
    chdir: str | None = None
    env: list[str] = field(default_factory=list)
    plugins: list[str] = field(default_factory=list)
    plugin_dir: str | None = None
    lazy_apps: bool = False
    lazy: bool = False
    need_app: bool = False
    enable_threads: bool = False
    threads: int = 1
    thread_stacksize: int = 0
    py_call_osafterfork: bool = False
    single_interpreter: bool = False
    mount: list[str] = field(default_factory=list)
    manage_script_name: bool = False
    no_default_app: bool = False
    py_autoreload: int = 0
    spooler: list[str] = field(default_factory=list)
    cache2: list[str] = field(default_factory=list)
    wsgi_env_behaviour: str | None = None
    umask: str | None = None
    honour_stdin: bool = False
    wsgi_disable_file_wrapper: bool = False
    route: list[str] = field(default_factory=list)
    route_uri: list[str] = field(default_factory=list)
    route_host: list[str] = field(default_factory=list)
    add_header: list[str] = field(default_factory=list)
    ignore_sigpipe: bool = False
    ignore_write_errors: bool = False
    disable_write_exception: bool = False
    write_errors_exception_only: bool = False
    write_errors_tolerance: int = 0
    master: bool = False
    processes: int = 1
    pidfile: str | None = None
    vacuum: bool = False
    die_on_term: bool = False
    no_reload_check: bool = False
    daemonize: str | None = None
    harakiri: int = 0
    max_requests: int = 0
    max_requests_delta: int = 0
    min_worker_lifetime: int = 10
    max_worker_lifetime: int = 0
    max_worker_lifetime_delta: int = 0
    worker_reload_mercy: int = 60
    reload_mercy: int = 3
    no_orphans: bool = False
    harakiri_verbose: bool = False
    max_fd: int | None = None
    ksm: str | None = None
    reload_on_rss: int = 0
    reload_on_as: int = 0
    evil_reload_on_rss: int = 0
    forkbomb_delay: int = 2
    check_interval: int = 1
    master_fifo: list[str] = field(default_factory=list)
    touch_reload: list[str] = field(default_factory=list)
    touch_workers_reload: list[str] = field(default_factory=list)
    touch_chain_reload: list[str] = field(default_factory=list)
    reload: str | None = None
    stop: str | None = None
    cheaper: int = 0
    cheaper_initial: int | None = None
    cheaper_step: int = 1
    cheaper_overload: int = 3
    cheaper_algo: str = "spare"
    cheaper_busyness_max: int = 50
    cheaper_busyness_min: int = 25
    cheaper_busyness_multiplier: int = 10
    cheaper_busyness_penalty: int = 2
    cheaper_busyness_verbose: bool = False
    cheaper_busyness_backlog_alert: int = 33
    cheaper_busyness_backlog_multiplier: int = 3
    cheaper_busyness_backlog_step: int = 1
    cheaper_busyness_backlog_nonzero: int = 60
    disable_logging: bool = False
    logto: str | None = None
    log_micros: bool = False
    memory_report: bool = False
    log_x_forwarded_for: bool = False
    log_4xx: bool = False
    log_5xx: bool = False
    log_slow: int = 0
    logformat: str | None = None
    log_format_strftime: bool = False
    log_date: str | None = None
    log_truncate: bool = False
    log_reopen: bool = False
    log_master: bool = False
    logger: list[str] = field(default_factory=list)
    req_logger: list[str] = field(default_factory=list)
    log_syslog: str | None = None
    log_route: list[str] = field(default_factory=list)
    log_req_route: list[str] = field(default_factory=list)
    log_encoder: list[str] = field(default_factory=list)
    log_req_encoder: list[str] = field(default_factory=list)
    log_drain: list[str] = field(default_factory=list)
    log_filter: list[str] = field(default_factory=list)
    log_maxsize: int = 0
    log_backupname: str | None = None
    touch_logrotate: list[str] = field(default_factory=list)
    touch_logreopen: list[str] = field(default_factory=list)
    log_master_bufsize: int = 8192
    log_master_stream: bool = False
    log_master_req_stream: bool = False
    threaded_logger: bool = False
    log_socket: str | None = None
    logto2: str | None = None
    worker_logger: list[str] = field(default_factory=list)
    worker_logger_req: list[str] = field(default_factory=list)
    log_alarm: list[str] = field(default_factory=list)
    auto_procname: bool = False
    procname_prefix: str | None = None
    procname_prefix_spaced: str | None = None
    procname_append: str | None = None
    procname: str | None = None
    procname_master: str | None = None
    stats: str | None = None
    stats_http: bool = False
    stats_minified: bool = False
    subscribe_to: list[str] = field(default_factory=list)
    subscribe2: list[str] = field(default_factory=list)
    subscribe_freq: int = 10
    subscription_tolerance: int = 17
    weight: int = 0
    auto_weight: bool = False
    subscribe_with_modifier1: int | None = None
    unsubscribe_on_graceful_reload: bool = False
    start_unsubscribed: bool = False
    subscription_notify_socket: str | None = None
    subscriptions_sign_secret: str | None = None
    subscription_allow: list[str] = field(default_factory=list)
    fastrouter: list[str] = field(default_factory=list)
    fastrouter_subscription_server: list[str] = field(default_factory=list)
    fastrouter_to: list[str] = field(default_factory=list)
    fastrouter_timeout: int = 60
    fastrouter_connect_timeout: int = 3
    fastrouter_processes: int = 1
    fastrouter_stats: str | None = None
    fastrouter_events: int = 64
    http: list[str] = field(default_factory=list)
    https: list[str] = field(default_factory=list)
    http_to_https: list[str] = field(default_factory=list)
    http_processes: int = 1
    http_to: list[str] = field(default_factory=list)
    http_subscription_server: list[str] = field(default_factory=list)
    http_stats: str | None = None
    http_timeout: int = 60
    http_headers_timeout: int = 0
    http_connect_timeout: int = 0
    http_auto_chunked: bool = False
    http_websockets: bool = False
    http_manage_expect: int = 0
    http_chunked_limit: int = 1073741824
    http_max_headers: int = 100
    http_max_head: int = 65536
    http_modifier1: int = 0
    http_modifier2: int = 0
    http_var: list[str] = field(default_factory=list)
    http_server_name_as_http_host: str | None = None
    http_raw_body: bool = False
    http_chunked_input: bool = False
    http_buffer_size: int = 4096
    http_events: int = 64
    http_gracetime: int = 30
    http_enable_proxy_protocol: bool = False
    static_map: list[str] = field(default_factory=list)
    static_map2: list[str] = field(default_factory=list)
    check_static: list[str] = field(default_factory=list)
    check_static_docroot: bool = False
    static_index: list[str] = field(default_factory=list)
    static_skip_ext: list[str] = field(default_factory=list)
    static_safe: list[str] = field(default_factory=list)
    static_expires_type: list[str] = field(default_factory=list)
    static_expires_type_mtime: list[str] = field(default_factory=list)
    static_expires: list[str] = field(default_factory=list)
    static_expires_mtime: list[str] = field(default_factory=list)
    static_expires_uri: list[str] = field(default_factory=list)
    static_expires_uri_mtime: list[str] = field(default_factory=list)
    static_expires_path_info: list[str] = field(default_factory=list)
    static_expires_path_info_mtime: list[str] = field(default_factory=list)
    static_gzip: list[str] = field(default_factory=list)
    static_gzip_all: bool = False
    static_gzip_dir: list[str] = field(default_factory=list)
    static_gzip_ext: list[str] = field(default_factory=list)
    honour_range: bool = False
    mimefile: list[str] = field(default_factory=list)
    file_serve_mode: str | None = None
    offload_threads: int = 0
    static_cache_paths: int = 0
    attach_daemon: list[str] = field(default_factory=list)
    attach_control_daemon: list[str] = field(default_factory=list)
    attach_daemon2: list[str] = field(default_factory=list)
    smart_attach_daemon: list[str] = field(default_factory=list)
    smart_attach_daemon2: list[str] = field(default_factory=list)
    daemons_honour_stdin: bool = False
    cron: list[str] = field(default_factory=list)
    unique_cron: list[str] = field(default_factory=list)
    cron2: list[str] = field(default_factory=list)
    hook_asap: list[str] = field(default_factory=list)
    hook_as_root: list[str] = field(default_factory=list)
    hook_as_user: list[str] = field(default_factory=list)
    hook_pre_app: list[str] = field(default_factory=list)
    hook_post_app: list[str] = field(default_factory=list)
    hook_master_start: list[str] = field(default_factory=list)
    hook_accepting: list[str] = field(default_factory=list)
    cron_harakiri: int = 0
    emperor: list[str] = field(default_factory=list)
    emperor_freq: int = 3
    emperor_throttle: int = 1000
    emperor_max_throttle: int = 180000
    emperor_no_blacklist: bool = False
    emperor_tyrant: bool = False
    emperor_tyrant_nofollow: bool = False
    emperor_nofollow: bool = False
    emperor_stats: str | None = None
    emperor_pidfile: str | None = None
    emperor_procname: str | None = None
    emperor_graceful_shutdown: bool = False
    vassals_inherit: list[str] = field(default_factory=list)
    vassals_include: list[str] = field(default_factory=list)
    vassals_inherit_before: list[str] = field(default_factory=list)
    vassals_include_before: list[str] = field(default_factory=list)
    vassal_set: list[str] = field(default_factory=list)
    emperor_curse_tolerance: int = 30
    emperor_on_demand_extension: str | None = None
    emperor_on_demand_directory: str | None = None
    emperor_on_demand_exec: str | None = None
    emperor_broodlord: int = 0
    emperor_required_heartbeat: int = 0
    emperor_wrapper: str | None = None
    emperor_extra_extension: list[str] = field(default_factory=list)
    emperor_magic_exec: bool = False
    asgi: str | None = None
    asgi_loop: str = "auto"
    asgi_concurrency: int = 1000
    asgi_lifespan: str = "auto"
    websockets_max_size: int = 1024
    websockets_ping_freq: int = 30
