package Plack::Handler::Pymaster;
# pymaster's Perl worker: `plackup -s Pymaster -L Pymaster app.psgi`, exec'd by the master.
#
# Takes the listening sockets the master left open (PYMASTER_LISTEN_FDS="3:uwsgi,4:http"),
# serves one request at a time in the uwsgi protocol or HTTP/1.1 (one request per
# connection), runs the PSGI app, writes the response itself, keeps its scoreboard slot, and
# follows the worker contract (docs/worker-contract.md): SIGHUP finishes the current request
# then exits 0; SIGINT/SIGQUIT/SIGTERM exit at once; recycling (max requests, RSS, min
# lifetime: pymaster/workers/contract.py Recycling) exits 0; honours every worker option
# (PYMASTER_OPT_*: the request log of pymaster/workers/wsgi/reqlog.py, limit-post); dies with the
# master. The listening sockets are shared with the other workers: close, never shutdown().
use strict;
use warnings;
use Errno qw(EINTR EAGAIN EWOULDBLOCK);
use Fcntl qw(F_GETFL F_SETFL O_NONBLOCK);
use POSIX ();
use Socket qw(SOL_SOCKET SO_RCVTIMEO SO_SNDTIMEO IPPROTO_TCP TCP_NODELAY TCP_DEFER_ACCEPT AF_INET AF_INET6
              sockaddr_family unpack_sockaddr_in unpack_sockaddr_in6 inet_ntop);
use Time::HiRes ();
use Scalar::Util ();
use HTTP::Status ();
use Plack::HTTPParser ();
use Plack::Util ();
use PerlIO::scalar ();         # in-memory psgi.input: loaded now, not on the first request

use constant {
    EXIT_OK => 0, EXIT_END => 30,
    ST_IDLE => 1, ST_BUSY => 2, ST_STOPPING => 3,
    SLOT_SIZE => 256, REQ_SIZE => 192,
    MEM_BODY_MAX => 1024 * 1024,
    BLOCK => 65536,
    IDLE_MAX => 128,             # idle keep-alive connections a worker holds; the oldest goes
    ACCEPT_BATCH => 8,           # connections accepted per select round at most
};

# File::Map (libfile-map-perl) maps the scoreboard once: slot updates become memory writes.
# Without it each update is sysseek + syswrite. PYMASTER_NO_FILE_MAP=1 forces the fallback.
my $HAVE_MAP = !$ENV{PYMASTER_NO_FILE_MAP} && eval { require File::Map; 1 };

my $SLOT_HEAD = 'VVQ<d<Q<Q<d<d<d<';      # pymaster/master/scoreboard.py HEAD ("<IIQdQQddd")
my $SLOT_REQ = 'a' . REQ_SIZE;              # at offset 64, after the head
my %NO_BODY = map { $_ => 1 } 204, 304;
my %SYS = (   # prctl, sendfile, accept4, dup3, read, write, close
    x86_64  => [157, 40, 288, 292, 0, 1, 3],
    aarch64 => [167, 71, 242, 24, 63, 64, 57],
);
my ($SYS_PRCTL, $SYS_SENDFILE, $SYS_ACCEPT4, $SYS_DUP3, $SYS_READ, $SYS_WRITE, $SYS_CLOSE)
    = $^O eq 'linux' ? @{ $SYS{(POSIX::uname())[4]} || [] } : ();
use constant CLOEXEC => 0x80000;    # O_CLOEXEC == SOCK_CLOEXEC on Linux x86_64 and aarch64
my (%REASON, %HEADER);
my $FAST_OFF = $ENV{PYMASTER_NO_FAST_PATH};   # 1: every request through the general path

our $STOPPING = 0;
my $EMPTY_INPUT;

sub new {
    my ($class, %args) = @_;
    return bless {%args}, $class;
}

# --log-date (pymaster/log.py): undef = no prefix, '' = ctime, else a strftime format; and the
# descriptor request lines go to under a request logger (PYMASTER_REQ_LOG_FD), else fd 2.
my ($DATE, $REQ_FH);

sub _log {
    my $line = join '', @_;
    $line = (length $DATE ? POSIX::strftime($DATE, localtime) : scalar localtime) . " - $line"
        if defined $DATE;
    utf8::encode($line) if utf8::is_utf8($line);
    $line .= "\n" unless $line =~ /\n\z/;
    _write_log($line);
}

# The log is fd 2 as the master set it up, whatever the app did to its STDERR handle (an
# `:encoding(UTF-8)` layer, as Catalyst puts on it, makes syswrite on STDERR die): the
# bytes go to the descriptor with write(2), no PerlIO handle involved.
sub _write_log {
    my $line = shift;
    my ($off, $len) = (0, length $line);
    while ($off < $len) {
        my $w = POSIX::write(2, $off ? substr($line, $off) : $line, $len - $off);
        if (!defined $w) { next if $! == EINTR; return }
        $off += $w;
    }
}

sub _log_verbose {    # always stamped (pymaster/log.py log_verbose)
    my $saved = $DATE;
    $DATE = '' unless defined $DATE;
    _log(@_);
    $DATE = $saved;
}

sub _log_req {    # a request line: never dated, one write (one message on the request fd)
    my $line = shift;
    utf8::encode($line) if utf8::is_utf8($line);
    $line .= "\n" unless $line =~ /\n\z/;
    if ($REQ_FH) { syswrite $REQ_FH, $line } else { _write_log($line) }
}

# -- setup ----------------------------------------------------------------------------------

sub _num {    # a number the master put in the environment, or die naming the variable
    my ($e, $name) = @_;
    my $v = $e->{$name};
    die "$name is not set or not a number: this handler runs under the pymaster master\n"
        unless defined $v && $v =~ /^\d+(?:\.\d+)?$/;
    return $v + 0;
}

sub _str {    # a string the master put in the environment (may be empty)
    my ($e, $name) = @_;
    die "$name is not set: this handler runs under the pymaster master\n" unless defined $e->{$name};
    return $e->{$name};
}

sub _setup {
    my $self = shift;
    my $e = \%ENV;
    $self->{wid}          = $e->{PYMASTER_WORKER_ID} || 1;
    $self->{master_pid}   = $e->{PYMASTER_MASTER_PID} || 0;
    # The master hands over every option flagged `worker` in its table (PYMASTER_OPT_*,
    # already range-checked, defaults applied) and the recycling limits (PYMASTER_RECYCLE_*);
    # see pymaster/workers/contract.py. Nothing here repeats a default.
    # Recycling (Recycling.reason there): max requests (0 never), RSS bytes (0 never), and
    # the lifetime below which neither applies. harakiri is the master's (the scoreboard).
    $self->{max_requests} = _num($e, 'PYMASTER_RECYCLE_MAX_REQUESTS');
    $self->{rss_limit}    = _num($e, 'PYMASTER_RECYCLE_RSS');
    $self->{min_lifetime} = _num($e, 'PYMASTER_RECYCLE_MIN_LIFETIME');
    $self->{as_limit}     = _num($e, 'PYMASTER_RECYCLE_AS');
    $self->{recycle}      = $self->{max_requests} || $self->{rss_limit} || $self->{as_limit};
    $self->{buffer_size}  = _num($e, 'PYMASTER_OPT_BUFFER_SIZE');
    $self->{timeout}      = _num($e, 'PYMASTER_OPT_SOCKET_TIMEOUT');
    $self->{keepalive}    = _num($e, 'PYMASTER_OPT_HTTP_KEEPALIVE');   # 0: off
    $self->{limit_post}   = _num($e, 'PYMASTER_OPT_LIMIT_POST');       # 0: no limit
    # --add-header: `Name: value` lines added to every response (checked by the master)
    my @extra             = grep { length } split /\n/, _str($e, 'PYMASTER_OPT_ADD_HEADER');
    $self->{extra_headers} = join '', map { my ($k, $v) = split /:/, $_, 2; "$k: " . ($v =~ s/^\s+|\s+\z//gr) . "\r\n" } @extra;
    $self->{extra_count}  = @extra;
    # route = REGEX donotlog: (pymaster/workers/routes.py, checked by the master): no request
    # line for a request whose PATH_INFO (route-uri: REQUEST_URI, route-host: HTTP_HOST) matches
    my @silent;
    for (['PYMASTER_OPT_ROUTE', 'PATH_INFO'], ['PYMASTER_OPT_ROUTE_URI', 'REQUEST_URI'],
         ['PYMASTER_OPT_ROUTE_HOST', 'HTTP_HOST']) {
        my ($var, $key) = @$_;
        for my $rule (grep { length } split /\n/, _str($e, $var)) {
            $rule =~ s/^\s+//;
            my ($re, $action) = split / /, $rule, 2;
            push @silent, [$key, qr/$re/] if ($action // '') =~ /^\s*donotlog\b/;
        }
    }
    $self->{silent} = @silent ? \@silent : undef;
    # a client gone mid-response (_app_failed): which of uWSGI's lines are logged
    my $quiet             = _num($e, 'PYMASTER_OPT_WRITE_ERRORS_EXCEPTION_ONLY');
    $self->{sigpipe_line} = !$quiet && !_num($e, 'PYMASTER_OPT_IGNORE_SIGPIPE');
    $self->{write_error_line} = !$quiet && !_num($e, 'PYMASTER_OPT_IGNORE_WRITE_ERRORS');
    # The request log (pymaster/workers/wsgi/reqlog.py): every request, or with logging
    # disabled only 4xx / 5xx / slower than log_slow ms ($self->{log_some}).
    $self->{log}          = !_num($e, 'PYMASTER_OPT_DISABLE_LOGGING');
    $self->{log_4xx}      = _num($e, 'PYMASTER_OPT_LOG_4XX');
    $self->{log_5xx}      = _num($e, 'PYMASTER_OPT_LOG_5XX');
    $self->{log_slow}     = _num($e, 'PYMASTER_OPT_LOG_SLOW');
    $self->{log_some}     = !$self->{log} && ($self->{log_4xx} || $self->{log_5xx} || $self->{log_slow});
    $self->{micros}       = _num($e, 'PYMASTER_OPT_LOG_MICROS');
    $self->{memory}       = _num($e, 'PYMASTER_OPT_MEMORY_REPORT');
    $self->{forwarded}    = _num($e, 'PYMASTER_OPT_LOG_X_FORWARDED_FOR');
    my $format            = _str($e, 'PYMASTER_OPT_LOGFORMAT');
    $self->{format}       = length $format ? $format : undef;   # empty: the default line
    my $date              = _str($e, 'PYMASTER_OPT_LOG_DATE');
    $DATE = !length $date || $date =~ /^(?:false|0|off|no)$/i ? undef
          : $date =~ /^(?:true|1|on|yes)$/i ? '' : $date;
    # %(ftime): the --log-date format with --log-format-strftime, else %(ltime)
    $self->{ftime}        = _num($e, 'PYMASTER_OPT_LOG_FORMAT_STRFTIME') && $DATE ? $DATE : undef;
    my $req_fd            = $e->{PYMASTER_REQ_LOG_FD} // '';
    if ($req_fd =~ /^\d+$/) {
        open($REQ_FH, '>&=', $req_fd)
            or _log("worker $self->{wid}: cannot open the request log fd $req_fd: $!");
    }
    $self->{idle}         = {};        # fd => idle keep-alive connection
    $self->{requests}     = 0;
    $self->{spawned}      = Time::HiRes::time();
    $self->{pid}          = $$;
    $0 = $e->{PYMASTER_PROCNAME} || "pymaster worker $self->{wid}";

    # die with the master: PR_SET_PDEATHSIG(SIGKILL) (+ the getppid check in the loop)
    syscall($SYS_PRCTL, 1, 9, 0, 0, 0) if $SYS_PRCTL;
    if ($self->{master_pid} && getppid() != $self->{master_pid}) {
        _log("worker $self->{wid} (pid: $$): master $self->{master_pid} is gone, exiting");
        POSIX::_exit(EXIT_END);
    }

    $SIG{HUP} = sub { $STOPPING = 1 };
    $SIG{$_} = sub { POSIX::_exit(EXIT_END) } for qw(INT QUIT TERM);
    $SIG{$_} = 'IGNORE' for qw(PIPE USR1 USR2 TTIN TTOU TSTP WINCH);

    my @listen;
    my $spec = $e->{PYMASTER_LISTEN_FDS};
    if (!defined $spec && $self->{listen_sock}) {       # in-process use (tests)
        $spec = fileno($self->{listen_sock}) . ':http';
    }
    die "PYMASTER_LISTEN_FDS is not set: this handler runs under the pymaster master\n"
        unless defined $spec && length $spec;
    for my $item (split /,/, $spec) {
        my ($fd, $proto) = split /:/, $item, 2;
        $proto ||= 'uwsgi';
        die "PYMASTER_LISTEN_FDS: bad entry '$item' (expected FD:uwsgi or FD:http)\n"
            unless $fd =~ /^\d+$/ && ($proto eq 'uwsgi' || $proto eq 'http');
        open my $fh, '+<&=', $fd or die "cannot use listening fd $fd: $!\n";
        my $flags = fcntl($fh, F_GETFL, 0);
        fcntl($fh, F_SETFL, $flags | O_NONBLOCK) if defined $flags;
        my ($name, $port) = _sockaddr(getsockname($fh));
        push @listen, { fh => $fh, fd => $fd, http => $proto eq 'http', tcp => defined $port,
                        name => $name || 'localhost', port => defined $port ? $port : '' };
    }
    $self->{listen} = \@listen;
    $self->{tv} = pack 'l!l!', $self->{timeout}, 0;
    # Linux copies SO_RCVTIMEO/SO_SNDTIMEO from a listener to the sockets it accepts: set them
    # once here (every worker of the socket sets the same value; they only matter to a
    # blocking accept, and every worker accepts non-blocking), and check it in _accept.
    for my $l (@listen) {
        # uwsgi over TCP: wake a worker only once the request has arrived, as uWSGI does by
        # default (its --no-defer-accept turns that off); nginx sends it right after connect
        setsockopt($l->{fh}, IPPROTO_TCP, TCP_DEFER_ACCEPT, $self->{timeout})
            if $l->{tcp} && !$l->{http} && !$e->{PYMASTER_NO_DEFER_ACCEPT};
        $l->{timeouts} = setsockopt($l->{fh}, SOL_SOCKET, SO_RCVTIMEO, $self->{tv})
            && setsockopt($l->{fh}, SOL_SOCKET, SO_SNDTIMEO, $self->{tv}) ? -16 : 0;
    }
    $self->_scoreboard_open($e->{PYMASTER_SCOREBOARD_FD});
    $self->_conn_slot_open if $SYS_ACCEPT4 && !$e->{PYMASTER_NO_FAST_ACCEPT};
}

# uwsgi connections are one at a time and never seen by the app: instead of a new Perl handle
# per connection (accept makes two PerlIO handles: 6 extra syscalls and their teardown), the
# connection is dup3'ed onto the fd of one handle opened once, and "closed" by dup3'ing
# /dev/null over it, so that fd number stays taken between requests.
sub _conn_slot_open {
    my $self = shift;
    open(my $slot, '+<', '/dev/null') && open(my $null, '+<', '/dev/null') or return;
    @$self{qw(cslot cfd nullfd null)} = ($slot, fileno($slot) + 0, fileno($null) + 0, $null);
}

sub _sockaddr {
    my $addr = shift;
    return unless defined $addr && length $addr >= 2;
    my $family = sockaddr_family($addr);
    if ($family == AF_INET) {
        my ($port, $ip) = unpack_sockaddr_in($addr);
        return (inet_ntop(AF_INET, $ip), $port);
    }
    if ($family == AF_INET6) {
        my ($port, $ip) = unpack_sockaddr_in6($addr);
        return (inet_ntop(AF_INET6, $ip), $port);
    }
    return;
}

# -- scoreboard (pymaster/master/scoreboard.py) ---------------------------------------------
# The memfd's open file description (and so its offset) is shared by every worker that
# inherited it; reopening it through /proc gives this worker its own offset, so that
# sysseek + syswrite cannot race with a sibling's. Each update is 2 syscalls (~1 us).

sub _scoreboard_open {
    my ($self, $fd) = @_;
    return unless defined $fd && $fd =~ /^\d+$/;
    my $sb;
    open($sb, '+<', "/proc/self/fd/$fd") or open($sb, '+<&=', $fd) or do {
        _log("worker $self->{wid}: cannot open the scoreboard fd $fd: $!");
        return;
    };
    binmode $sb;
    my $size = -s $sb || 0;
    my $off = ($self->{wid} - 1) * SLOT_SIZE;
    if ($off + SLOT_SIZE > $size) {
        _log("worker $self->{wid}: no scoreboard slot (table has " . int($size / SLOT_SIZE) . ")");
        return;
    }
    $self->{sb} = $sb;
    $self->{sb_off} = $off;
    $self->{sb_slots} = int($size / SLOT_SIZE);
    if ($HAVE_MAP) {       # mapped into a lexical: a hash element would not stay mapped
        if (eval { File::Map::map_handle(my $map, $sb, '+<'); $self->{map} = \$map; 1 }) {}
        else {
            (my $err = "$@") =~ s/\s+\z//;
            _log("worker $self->{wid}: cannot map the scoreboard ($err), using sysseek + syswrite");
        }
    }
    # pid, state, requests, req_start, exceptions, tx, running_time, avg_rt, last_spawn
    $self->{slot} = [$$, 0, 0, 0.0, 0, 0, 0.0, 0.0, $self->{spawned}];
    $self->_slot_write("\0" x REQ_SIZE);
}

sub _slot_write {
    my ($self, $tail) = @_;
    my $data = pack $SLOT_HEAD, @{ $self->{slot} };
    $data .= $tail if defined $tail;
    if (my $map = $self->{map}) {
        substr($$map, $self->{sb_off}, length $data, $data);
        return;
    }
    sysseek $self->{sb}, $self->{sb_off}, 0;
    syswrite $self->{sb}, $data;
}

sub _slot_state {
    my ($self, $state) = @_;
    return unless $self->{sb};
    $self->{slot}[1] = $state;
    $self->_slot_write;
}

sub _slot_begin {
    my ($self, $start, $what) = @_;
    return unless $self->{sb};
    my $slot = $self->{slot};
    $slot->[1] = ST_BUSY;
    $slot->[3] = $start;
    utf8::encode($what) if utf8::is_utf8($what);
    my $tail = pack $SLOT_REQ, substr($what, 0, REQ_SIZE - 1);
    if (my $map = $self->{map}) {            # only what changes: state, req_start, request
        my $off = $self->{sb_off};
        substr($$map, $off + 64, REQ_SIZE, $tail);
        substr($$map, $off + 16, 8, pack 'd<', $start);
        substr($$map, $off + 4, 4, pack 'V', ST_BUSY);
        return;
    }
    $self->_slot_write($tail);
}

sub _slot_end {
    my ($self, $elapsed, $tx, $exception) = @_;
    return unless $self->{sb};
    my $slot = $self->{slot};
    my $n = ++$slot->[2];
    $slot->[1] = ST_IDLE;
    $slot->[3] = 0.0;
    $slot->[4]++ if $exception;
    $slot->[5] += $tx;
    $slot->[6] += $elapsed;
    $slot->[7] = $n == 1 ? $elapsed : $slot->[7] + ($elapsed - $slot->[7]) / ($n < 100 ? $n : 100);
    $self->_slot_write;
}

sub _instance_requests {
    my $self = shift;
    my $sb = $self->{sb} or return $self->{requests};
    my $n = $self->{sb_slots};
    my $all;
    if (my $map = $self->{map}) {
        $all = $$map;
    }
    else {
        sysseek $sb, 0, 0;
        sysread($sb, $all, $n * SLOT_SIZE) == $n * SLOT_SIZE or return $self->{requests};
    }
    my $total = 0;
    $total += unpack 'Q<', substr($all, $_ * SLOT_SIZE + 8, 8) for 0 .. $n - 1;
    return $total;
}

# -- the loop -------------------------------------------------------------------------------

sub run {
    my ($self, $app) = @_;
    $self->_setup;
    $self->{app} = $app;
    $self->_slot_state(ST_IDLE);
    my $listen = $self->{listen};
    $_->{fast} = $self->{cslot} && defined $SYS_READ && !$_->{http} && !$FAST_OFF for @$listen;
    my $idle = $self->{idle};
    $self->{rin} = '';
    vec($self->{rin}, $_->{fd}, 1) = 1 for @$listen;
    my $ka = $self->{keepalive};
    my $tick = $ka && $ka < 2 ? $ka / 2 : 1.0;
    my $now = Time::HiRes::time();
    my $next_check = $now + $tick;
    my $next_parent = $now + 1;
    while (!$STOPPING) {
        my $n = select(my $rout = $self->{rin}, undef, undef, $tick);
        if ($n && $n > 0) {
            for my $l (@$listen) {
                next unless vec($rout, $l->{fd}, 1);
                # under load the backlog is rarely empty: accept again before the next select
                if ($l->{fast}) {
                    for (1 .. ACCEPT_BATCH) {
                        last unless $self->_serve_uwsgi($l) && !$STOPPING;
                    }
                }
                else {
                    for (1 .. ACCEPT_BATCH) {
                        last unless $self->_accept($l) && !$STOPPING;
                    }
                }
                last if $STOPPING;
            }
            if (%$idle) {
                for my $fd (keys %$idle) {
                    last if $STOPPING;
                    next unless vec($rout, $fd, 1) && $idle->{$fd};
                    vec($self->{rin}, $fd, 1) = 0;
                    $self->_serve(delete $idle->{$fd});
                }
            }
        }
        $now = Time::HiRes::time();
        next if $now < $next_check;
        $next_check = $now + $tick;
        $self->_expire_idle($now - $ka) if %$idle;
        if ($now >= $next_parent) {
            $next_parent = $now + 1;
            if ($self->{master_pid} && getppid() != $self->{master_pid}) {
                _log("worker $self->{wid} (pid: $$): master $self->{master_pid} is gone, exiting");
                $self->_close_idle;
                last;
            }
        }
    }
    $self->_drain_idle;
    $self->_slot_state(ST_STOPPING);
    exit EXIT_OK;
}

sub _accept {
    my ($self, $l) = @_;
    my ($c, $peer, $slot);
    if ($self->{cslot} && !$l->{http}) {
        my ($addr, $len) = ("\0" x 128, pack 'L', 128);
        my $fd = syscall($SYS_ACCEPT4, $l->{fd} + 0, $addr, $len, CLOEXEC);
        if ($fd >= 0) {
            my $ok = syscall($SYS_DUP3, $fd, $self->{cfd}, CLOEXEC) >= 0;
            POSIX::close($fd);
            ($c, $peer, $slot) = ($self->{cslot}, substr($addr, 0, unpack 'L', $len), 1) if $ok;
        }
    }
    else {
        $peer = accept($c, $l->{fh});
    }
    if (!$peer) {
        _log("accept(): $! [worker $self->{wid}]")
            unless $! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR;
        return 0;
    }
    $self->_timeouts($l, $c) if $l->{timeouts} != 1;
    setsockopt($c, IPPROTO_TCP, TCP_NODELAY, 1) if $l->{http} && $l->{tcp};
    $self->_serve({ c => $c, fd => fileno $c, l => $l, buf => '', peer => $peer, slot => $slot });
    return 1;
}

sub _timeouts {
    my ($self, $l, $c) = @_;
    my $t = $l->{timeouts};                  # 1 inherited, 0 never, -N: N more looks
    # Inherited from the listener (see _setup)? A connection queued before the listener
    # got them has none, so look at a few before giving up on inheritance.
    if ($t < 0 && (getsockopt($c, SOL_SOCKET, SO_RCVTIMEO) // '') eq $self->{tv}) {
        $l->{timeouts} = 1;
    }
    else {
        setsockopt($c, SOL_SOCKET, SO_RCVTIMEO, $self->{tv});
        setsockopt($c, SOL_SOCKET, SO_SNDTIMEO, $self->{tv});
        $l->{timeouts}++ if $t < 0;
    }
}

sub _close {
    my ($self, $conn) = @_;
    return if $conn->{closed}++;
    if ($conn->{slot}) { syscall($SYS_DUP3, $self->{nullfd}, $self->{cfd}, CLOEXEC) }
    else { close $conn->{c} }
}

# The client's address and port, decoded on first use (nginx sends REMOTE_ADDR itself).
sub _remote {
    my $conn = shift;
    if (!defined $conn->{remote}) {
        my ($addr, $port) = _sockaddr($conn->{peer});
        $conn->{remote} = defined $addr ? $addr : '';
        $conn->{remote_port} = defined $port ? $port : '';
    }
    return ($conn->{remote}, $conn->{remote_port});
}

sub _client { return (_remote($_[0]{conn}))[0] }

# Serve requests on a connection, one at a time, until it closes or goes idle: then it is
# parked with the listeners in the select (HTTP keep-alive).
sub _serve {
    my ($self, $conn) = @_;
    my $keep;
    while (1) {
        my $req = {
            c => $conn->{c}, l => $conn->{l}, conn => $conn, start => Time::HiRes::time(),
        };
        $keep = 0;
        eval {
            my $env = $conn->{l}{http} ? $self->_read_http($req) : $self->_read_uwsgi($req);
            $keep = $env && $self->_dispatch($req, $env);
            1;
        } or do {
            (my $err = "$@") =~ s/\s+\z//;
            _log("worker $self->{wid} (pid: $$): internal error, connection dropped: $err");
        };
        last unless $keep && length $conn->{buf};     # pipelined: the next request now
    }
    if ($keep) {
        $self->_park($conn);
    }
    else {
        $self->_close($conn);
    }
}

sub _park {
    my ($self, $conn) = @_;
    my $idle = $self->{idle};
    if (keys %$idle >= IDLE_MAX) {                 # make room: drop the longest idle one
        my ($oldest) = sort { $idle->{$a}{since} <=> $idle->{$b}{since} } keys %$idle;
        $self->_unpark($oldest);
    }
    $conn->{since} = $self->{now} || Time::HiRes::time();
    $idle->{$conn->{fd}} = $conn;
    vec($self->{rin}, $conn->{fd}, 1) = 1;
}

sub _unpark {
    my ($self, $fd) = @_;
    my $conn = delete $self->{idle}{$fd} or return;
    vec($self->{rin}, $fd, 1) = 0;
    close $conn->{c};
}

sub _expire_idle {
    my ($self, $before) = @_;
    my $idle = $self->{idle};
    $idle->{$_}{since} < $before and $self->_unpark($_) for keys %$idle;
}

sub _close_idle {
    my $self = shift;
    $self->_unpark($_) for keys %{ $self->{idle} };
}

# Stopping: a request already waiting on an idle connection is answered (with
# `Connection: close`, since $STOPPING is set); the other idle connections are closed.
sub _drain_idle {
    my $self = shift;
    my $idle = $self->{idle};
    return unless %$idle;
    my $rin = '';
    vec($rin, $_, 1) = 1 for keys %$idle;
    my $n = select(my $rout = $rin, undef, undef, 0);
    for my $fd (keys %$idle) {
        if ($n && $n > 0 && vec($rout, $fd, 1)) {
            vec($self->{rin}, $fd, 1) = 0;
            $self->_serve(delete $idle->{$fd});
        }
        $self->_unpark($fd);
    }
}

sub _sysread_more {
    my ($c, $bufref, $want) = @_;
    while (1) {
        my $r = sysread $c, $$bufref, $want, length $$bufref;
        return $r if defined $r;
        next if $! == EINTR;
        return undef;
    }
}

# -- uwsgi ----------------------------------------------------------------------------------

sub _read_uwsgi {
    my ($self, $req) = @_;
    my $c = $req->{c};
    my $buf = $req->{conn}{buf};              # what the fast path already read
    $req->{conn}{buf} = '';
    while (length $buf < 4) {
        my $r = _sysread_more($c, \$buf, BLOCK);
        return $self->_parser_error($r) unless $r;
    }
    my ($m1, $size) = unpack 'Cv', $buf;
    if ($size > $self->{buffer_size}) {
        _log("invalid request block size: $size (max $self->{buffer_size})...skip");
        return;
    }
    while (length $buf < 4 + $size) {
        my $r = _sysread_more($c, \$buf, BLOCK);
        return $self->_parser_error($r) unless $r;
    }
    if ($m1 != 5 && $m1 != 0) {
        _log("-- unavailable modifier requested: $m1 --");
        return;
    }
    my @kv = eval { unpack '(v/a* v/a*)*', substr($buf, 4, $size) };
    my $used = 2 * @kv;
    $used += length for @kv;
    if ($@ || $used != $size || @kv % 2) {
        _log("invalid uwsgi request (current strsize: $size). skip.");
        return;
    }
    my %env = @kv;
    if (keys(%env) * 2 != @kv) {             # repeated vars: join them as uWSGI does
        %env = ();
        for (my $i = 0; $i < @kv; $i += 2) {
            my ($k, $v) = @kv[$i, $i + 1];
            $env{$k} = exists $env{$k} ? "$env{$k}, $v" : $v;
        }
    }
    if (exists $env{''}) {
        _log('uwsgi key cannot be null. skip this var.');
        return;
    }
    $req->{nvars} = @kv / 2;
    $req->{pktsize} = $size;
    $req->{rest} = substr $buf, 4 + $size;
    my $l = $req->{l};
    $env{SERVER_NAME} = $l->{name} unless defined $env{SERVER_NAME} && length $env{SERVER_NAME};
    $env{SERVER_PORT} = $l->{port} unless defined $env{SERVER_PORT} && length $env{SERVER_PORT};
    unless (defined $env{REMOTE_ADDR} && defined $env{REMOTE_PORT}) {
        my ($addr, $port) = _remote($req->{conn});
        $env{REMOTE_ADDR} = $addr unless defined $env{REMOTE_ADDR};
        $env{REMOTE_PORT} = $port unless defined $env{REMOTE_PORT};
    }
    my $scheme = _complete_uwsgi_env(\%env);
    $env{'psgi.url_scheme'} = $scheme;
    if (my $limit = $self->{limit_post}) {
        my ($len) = (defined $env{CONTENT_LENGTH} ? $env{CONTENT_LENGTH} : '') =~ /^(\d+)/;
        return $self->_too_large($req, "Content-Length $len over the limit of $limit")
            if $len && $len > $limit;
    }
    return $self->_read_body($req, \%env);
}

# An app that died (or a client gone mid-write): log it; answer 500 if nothing was sent yet.
# A client gone gets uWSGI's lines (apps/wsgi.py Call._write_failed): the SIGPIPE one on
# EPIPE unless --ignore-sigpipe, the writer's unless --ignore-write-errors (both off with
# --write-errors-exception-only).
sub _app_failed {
    my ($self, $req, $err, $method, $uri, $addr) = @_;
    if (ref $err eq 'Plack::Handler::Pymaster::Gone') {
        $addr //= '';
        _log_verbose("SIGPIPE: writing to a closed pipe/socket/fd (probably the client "
            . "disconnected) on request $uri (ip $addr) !!!") if $err->{epipe} && $self->{sigpipe_line};
        _log_verbose("uwsgi_response_write_body_do(): $err->{msg} during $method $uri ($addr)")
            if $self->{write_error_line};
        return;
    }
    $err = "$err";
    $err =~ s/\s+\z//;
    _log("[pymaster-perl error] $method $uri: $err");
    $self->_send_500($req) unless $req->{sent};
}

# What nginx may leave out of a uwsgi request: PATH_INFO, QUERY_STRING, REQUEST_URI filled
# from each other; returns the URL scheme (UWSGI_SCHEME, else HTTPS on/1, else http).
sub _complete_uwsgi_env {
    my ($env) = @_;
    if (!defined $env->{PATH_INFO}) {
        my ($path) = split /\?/, (defined $env->{REQUEST_URI} ? $env->{REQUEST_URI} : ''), 2;
        ($env->{PATH_INFO} = $path) =~ s/%([0-9A-Fa-f]{2})/chr hex $1/eg;
    }
    $env->{QUERY_STRING} = '' unless defined $env->{QUERY_STRING};
    $env->{REQUEST_URI} = length $env->{QUERY_STRING} ? "$env->{PATH_INFO}?$env->{QUERY_STRING}"
                                                      : $env->{PATH_INFO}
        unless defined $env->{REQUEST_URI};
    my $scheme = $env->{UWSGI_SCHEME};
    return $scheme if defined $scheme && ($scheme eq 'http' || $scheme eq 'https');
    my $https = $env->{HTTPS} || '';
    return (lc($https) eq 'on' || $https eq '1') ? 'https' : 'http';
}

sub _parser_error {
    my ($self, $r) = @_;
    my $why = defined $r ? 'Success'
            : ($! == EAGAIN || $! == EWOULDBLOCK) ? "timeout after $self->{timeout} s" : "$!";
    _log("uwsgi_proto_uwsgi_parser(): $why [worker $self->{wid}]");
    return;
}

# -- HTTP -----------------------------------------------------------------------------------

sub _read_http {
    my ($self, $req) = @_;
    my $c = $req->{c};
    my $limit = $self->{buffer_size} > 8192 ? $self->{buffer_size} : 8192;
    my $conn = $req->{conn};
    my $buf = $conn->{buf};                   # what a pipelining client sent after the last one
    $conn->{buf} = '';
    my (%env, $ret);
    while (1) {
        if (!length $buf || $ret) {           # $ret == -1: incomplete, read more
            my $r = _sysread_more($c, \$buf, BLOCK);
            return unless $r;                 # closed or timed out before a request: quietly
        }
        $ret = Plack::HTTPParser::parse_http_request($buf, \%env);
        last if $ret >= 0;
        if ($ret == -2) {
            _log("HTTP error from " . _client($req) . ": malformed request");
            return $self->_http_error($req, 400, 'Bad Request');
        }
        if (length $buf > $limit) {
            _log("HTTP error from " . _client($req) . ": request head larger than $limit bytes");
            return $self->_http_error($req, 431, 'Request Header Fields Too Large');
        }
        %env = ();
    }
    $req->{rest} = substr $buf, $ret;
    my $l = $req->{l};
    $env{SCRIPT_NAME} = '';
    $env{SERVER_NAME} = $l->{name};
    $env{SERVER_PORT} = $l->{port};
    @env{qw(REMOTE_ADDR REMOTE_PORT)} = _remote($req->{conn});
    $env{'psgi.url_scheme'} = 'http';
    # psgix.io, the client socket: a tied element, so the server knows whether the app took
    # it (Plack::Handler::Pymaster::IO below); feature tests such as `if ($env->{'psgix.io'})`
    # count as taking it too, which only matters for the answers listed in _dispatch
    $req->{io} = tie $env{'psgix.io'}, 'Plack::Handler::Pymaster::IO', $c;
    my $connection = $env{HTTP_CONNECTION};     # kept: WebSocket handshakes read it
    $req->{keep} = $self->{keepalive} && (($env{SERVER_PROTOCOL} // '') eq 'HTTP/1.1'
        ? !(defined $connection && $connection =~ /\bclose\b/i)
        : (defined $connection && $connection =~ /\bkeep-alive\b/i));
    my ($cl, $max) = ($env{CONTENT_LENGTH}, $self->{limit_post});
    return $self->_too_large($req, "Content-Length $cl over the limit of $max")
        if $max && defined $cl && $cl =~ /^\d+$/ && $cl > $max;
    my $te = delete $env{HTTP_TRANSFER_ENCODING};
    if (defined $te && $te =~ /\bchunked\b/i) {
        $self->_continue($req, \%env);
        my $body = $self->_dechunk($req) // return;
        $env{CONTENT_LENGTH} = length $body;
        $req->{rest} = $body;
    }
    elsif (defined $te) {
        return $self->_http_error($req, 501, 'Not Implemented');
    }
    elsif ($env{CONTENT_LENGTH}) {
        $self->_continue($req, \%env) if length $req->{rest} < $env{CONTENT_LENGTH};
    }
    # the log's {N vars in M bytes}: the CGI vars (no '.' in the name) as a uwsgi vars block
    # would carry them, u16 lengths included, as the Python worker counts them (uwsgi.vars_size:
    # Transfer-Encoding counted, empty Content-Length/-Type still there); psgix.io not FETCHed
    if ($self->{log} || $self->{log_some}) {
        my ($n, $size) = defined $te ? (1, 26 + length $te) : (0, 0);
        for (keys %env) {
            next if /\./;
            $n++;
            $size += 4 + length($_) + length($env{$_} // '');
        }
        @$req{qw(nvars pktsize)} = ($n, $size);
    }
    return $self->_read_body($req, \%env);
}

sub _continue {
    my ($self, $req, $env) = @_;
    my $expect = $env->{HTTP_EXPECT};
    return unless defined $expect && lc $expect eq '100-continue'
        && ($env->{SERVER_PROTOCOL} || '') eq 'HTTP/1.1';
    _write_all($req->{c}, "HTTP/1.1 100 Continue\r\n\r\n");
}

sub _dechunk {
    my ($self, $req) = @_;
    my $c = $req->{c};
    my $in = $req->{rest};
    my $body = '';
    my $pos = 0;
    while (1) {
        my $eol = index $in, "\r\n", $pos;
        if ($eol < 0) {
            _sysread_more($c, \$in, BLOCK) or return $self->_bad_chunk($req);
            next;
        }
        my $line = substr $in, $pos, $eol - $pos;
        return $self->_bad_chunk($req) unless $line =~ /^([0-9A-Fa-f]+)/;
        my $size = hex $1;
        if ($size == 0) {                         # trailers until the empty line
            $pos = $eol + 2;
            while (1) {
                my $end = index $in, "\r\n", $pos;
                if ($end < 0) {
                    _sysread_more($c, \$in, BLOCK) or return $self->_bad_chunk($req);
                    next;
                }
                if ($end == $pos) {
                    $req->{conn}{buf} = substr $in, $end + 2;    # pipelined after the body
                    return $body;
                }
                $pos = $end + 2;
            }
        }
        while (length($in) < $eol + 2 + $size + 2) {
            _sysread_more($c, \$in, BLOCK) or return $self->_bad_chunk($req);
        }
        $body .= substr $in, $eol + 2, $size;
        return $self->_too_large($req, "request body over the limit of $self->{limit_post} bytes")
            if $self->{limit_post} && length $body > $self->{limit_post};
        $pos = $eol + 2 + $size + 2;
        if ($pos > BLOCK) { substr($in, 0, $pos, ''); $pos = 0 }
    }
}

sub _bad_chunk {
    my ($self, $req) = @_;
    _log("HTTP error from " . _client($req) . ": bad chunked request body");
    return $self->_http_error($req, 400, 'Bad Request');
}

# --limit-post: refused as the Python worker does (pymaster/protocols/http.py error_response,
# and the same log line), then closed so that the answer is read, not reset: stop writing,
# and drain what the client still sends for a short while.
sub _too_large {
    my ($self, $req, $detail) = @_;
    _log("HTTP error from " . _client($req) . ": 413 Content Too Large: $detail");
    my $c = $req->{c};
    my $body = "413 Content Too Large\n$detail\n";
    eval {
        _write_all($c, "HTTP/1.1 413 Content Too Large\r\nContent-Type: text/plain\r\n"
            . 'Content-Length: ' . length($body) . "\r\nConnection: close\r\n\r\n$body");
        1;
    } or return;
    shutdown $c, 1;
    my $rin = '';
    vec($rin, fileno $c, 1) = 1;
    my $deadline = Time::HiRes::time() + 0.5;
    while ((my $left = $deadline - Time::HiRes::time()) > 0) {
        last unless select(my $rout = $rin, undef, undef, $left < 0.2 ? $left : 0.2) > 0
            && sysread $c, my $junk, BLOCK;
    }
    return;
}

sub _http_error {
    my ($self, $req, $status, $reason) = @_;
    _write_all($req->{c}, "HTTP/1.1 $status $reason\r\nContent-Type: text/plain\r\n"
        . 'Content-Length: ' . length($reason) . "\r\nConnection: close\r\n\r\n$reason");
    return;
}

# -- request body: buffered, seekable, bounded by CONTENT_LENGTH ----------------------------

sub _read_body {
    my ($self, $req, $env) = @_;
    for (qw(CONTENT_LENGTH CONTENT_TYPE)) {
        delete $env->{$_} if defined $env->{$_} && $env->{$_} eq '';
        delete $env->{"HTTP_$_"};
    }
    my ($len) = (defined $env->{CONTENT_LENGTH} ? $env->{CONTENT_LENGTH} : '') =~ /^(\d+)/;
    $len ||= 0;
    my $rest = delete $req->{rest};
    if (length $rest > $len) {                # pipelined requests follow the body
        $req->{conn}{buf} = substr $rest, $len;
        substr($rest, $len) = '';
    }
    my $input;
    if (!$len) {
        # one shared empty handle for bodiless requests, unless an app closed or moved it
        $input = $EMPTY_INPUT if $EMPTY_INPUT && tell($EMPTY_INPUT) == 0 && eof($EMPTY_INPUT);
        open $input, '<', \'' or die "cannot open an empty psgi.input: $!\n" unless $input;
        $EMPTY_INPUT = $input;
    }
    elsif ($len <= MEM_BODY_MAX) {
        my $body = $rest;
        while (length $body < $len) {
            return $self->_short_body($req, $len, length $body)
                unless _sysread_more($req->{c}, \$body, $len - length $body);
        }
        open $input, '<', \$body;
    }
    else {
        open $input, '+>', undef or die "cannot create a temporary file for the body: $!\n";
        binmode $input;
        my $got = length $rest;
        print {$input} $rest;
        while ($got < $len) {
            my $chunk = '';
            my $want = $len - $got < BLOCK ? $len - $got : BLOCK;
            return $self->_short_body($req, $len, $got)
                unless _sysread_more($req->{c}, \$chunk, $want);
            print {$input} $chunk;
            $got += length $chunk;
        }
        seek $input, 0, 0;
    }
    $env->{'psgi.input'} = $input;
    return $env;
}

sub _short_body {
    my ($self, $req, $len, $got) = @_;
    _log("request body incomplete: got $got of $len bytes from " . _client($req) . " ("
         . ($! ? "$!" : 'client closed') . ')');
    return;
}

# -- running the app ------------------------------------------------------------------------

my $LOGGER = sub {
    my $args = shift;
    die "psgix.logger needs {level => ..., message => ...}\n"
        unless ref $args eq 'HASH' && defined $args->{level} && defined $args->{message};
    _log("[pymaster-perl $args->{level}] $args->{message}");
};
# The fixed PSGI keys, set with one hash slice; the last two get fresh references per request.
my @PSGI_KEYS = ('psgi.errors', 'psgi.multithread', 'psgi.multiprocess', 'psgi.run_once',
                 'psgi.nonblocking', 'psgi.streaming', 'psgix.input.buffered', 'psgix.harakiri',
                 'psgix.cleanup', 'psgix.logger', 'psgi.version', 'psgix.cleanup.handlers');
my @PSGI_VALUES = (*STDERR, '', 1, '', '', 1, 1, 1, 1, $LOGGER);

# -- the uwsgi fast path --------------------------------------------------------------------
# The common uwsgi request (what nginx sends: the whole packet in one read, no body or a body
# that came with it, an array response with an array body) is handled here in one sub,
# without the per-request hashes, method calls and closures of the general path. Anything
# else (short reads, bad packets, repeated or empty vars, a body still to read, streaming,
# handles, delayed responses) goes to the general path with what was read so far, and
# behaves exactly as there.
my @FAST_KEYS = (@PSGI_KEYS, 'psgi.url_scheme', 'psgi.input');
my $SLOT_ALL = $SLOT_HEAD . 'Z' . REQ_SIZE;        # the whole slot: head + "METHOD URI\0"
my $RBUF = "\0" x BLOCK;                             # read(2) buffer: syscall needs it pre-sized

sub _serve_uwsgi {
    my ($self, $l) = @_;
    # accept4 without the peer address (nginx sends REMOTE_ADDR; getpeername when it does not)
    my $fd = syscall($SYS_ACCEPT4, $l->{fd} + 0, 0, 0, CLOEXEC);
    if ($fd < 0) {
        _log("accept(): $! [worker $self->{wid}]")
            unless $! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR;
        return 0;
    }
    # The connection is read and written with raw syscalls on its own fd, and closed with
    # close(2); $c, the slot handle, only when the general path needs a Perl handle (_adopt).
    my $c;
    ($c, $fd) = ($self->_adopt($fd), $self->{cfd}) if $l->{timeouts} != 1;
    $self->_timeouts($l, $c) if $c;
    my $start = Time::HiRes::time();
    my $r;
    do { $r = syscall($SYS_READ, $fd, $RBUF, BLOCK) } while $r < 0 && $! == EINTR;
    if ($r <= 0) {
        $self->_parser_error($r < 0 ? undef : 0);
        if ($c) { syscall($SYS_DUP3, $self->{nullfd}, $fd, CLOEXEC) } else { syscall($SYS_CLOSE, $fd) }
        return 1;
    }
    my ($size, $len, %env) = (0, 0);
    my @kv;
    if ($r >= 4) {
        my $m1;
        ($m1, $size) = unpack 'Cv', $RBUF;
        @kv = eval { unpack '(v/a v/a)*', substr($RBUF, 4, $size) }
            if $size <= $self->{buffer_size} && $r >= 4 + $size && ($m1 == 5 || $m1 == 0);
    }
    if (@kv && !(@kv % 2) && length(join '', @kv) + 2 * @kv == $size) {
        %env = @kv;
        my $cl = $env{CONTENT_LENGTH};
        ($len) = $cl =~ /^(\d+)/ if defined $cl && length $cl;
        $len ||= 0;
        undef @kv if keys(%env) * 2 != @kv || exists $env{''} || $len > $r - 4 - $size
            || $self->{limit_post} && $len > $self->{limit_post};
    }
    else { undef @kv }
    unless (@kv) {
        ($c, $fd) = ($self->_adopt($fd), $self->{cfd}) unless $c;
        $self->_serve({ c => $c, fd => $fd, l => $l, buf => substr($RBUF, 0, $r),
                        peer => getpeername($c), slot => 1 });
        return 1;
    }

    # the env, as _read_uwsgi + _read_body + _dispatch make it
    delete @env{'HTTP_CONTENT_LENGTH', 'HTTP_CONTENT_TYPE'};
    delete $env{CONTENT_LENGTH} if defined $env{CONTENT_LENGTH} && $env{CONTENT_LENGTH} eq '';
    delete $env{CONTENT_TYPE} if defined $env{CONTENT_TYPE} && $env{CONTENT_TYPE} eq '';
    $env{SERVER_NAME} = $l->{name} unless defined $env{SERVER_NAME} && length $env{SERVER_NAME};
    $env{SERVER_PORT} = $l->{port} unless defined $env{SERVER_PORT} && length $env{SERVER_PORT};
    unless (defined $env{REMOTE_ADDR} && defined $env{REMOTE_PORT}) {
        ($c, $fd) = ($self->_adopt($fd), $self->{cfd}) unless $c;
        my ($addr, $port) = _sockaddr(getpeername($c));
        $env{REMOTE_ADDR} = $addr // '' unless defined $env{REMOTE_ADDR};
        $env{REMOTE_PORT} = $port // '' unless defined $env{REMOTE_PORT};
    }
    my $scheme = _complete_uwsgi_env(\%env);
    $env{SCRIPT_NAME} = '' if !defined $env{SCRIPT_NAME} || $env{SCRIPT_NAME} eq '/';
    $env{REQUEST_METHOD} = 'GET' unless defined $env{REQUEST_METHOD} && length $env{REQUEST_METHOD};
    my $input;
    if ($len) {
        my $body = substr $RBUF, 4 + $size, $len;
        open $input, '<', \$body;
    }
    else {
        $input = $EMPTY_INPUT if $EMPTY_INPUT && tell($EMPTY_INPUT) == 0 && eof($EMPTY_INPUT);
        open $input, '<', \'' or die "cannot open an empty psgi.input: $!\n" unless $input;
        $EMPTY_INPUT = $input;
    }
    @env{@FAST_KEYS} = (@PSGI_VALUES, [1, 1], [], $scheme, $input);

    my $method = $env{REQUEST_METHOD};
    my $uri = $env{REQUEST_URI};
    my $slot = $self->{slot};
    if ($self->{sb}) {
        my $what = "$method $uri";             # bytes: from the vars, as unpack gave them
        @$slot[1, 3] = (ST_BUSY, $start);
        if (my $map = $self->{map}) { substr($$map, $self->{sb_off}, SLOT_SIZE, pack $SLOT_ALL, @$slot, $what) }
        else { $self->_slot_write(pack $SLOT_REQ, substr($what, 0, REQ_SIZE - 1)) }
    }
    my $proto = $env{SERVER_PROTOCOL} || 'HTTP/1.0';
    my $head_only = $method eq 'HEAD';
    my ($status, $headers, $head_bytes, $tx, $failed, $sent, $req) = (500, 0, 0, 0, 0, 0);
    my $ok = eval {
        my $res = $self->{app}->(\%env);
        my ($st, $h, $body) = ref $res eq 'ARRAY' && @$res == 3 ? @$res : ();
        my $general = !(ref $body eq 'ARRAY' && ref $h eq 'ARRAY' && !(@$h % 2));
        unless ($general) {
            my $reason = $REASON{$st // ''} // _reason($st);
            my $out = "$proto $st $reason\r\n";
            my $has_len;
            for (my $i = 0; $i < @$h; $i += 2) {
                my ($k, $v) = @$h[$i, $i + 1];
                my $lk = defined $k && $HEADER{$k} || _header_name($k);
                die "invalid value for header $k: " . (defined $v ? 'it contains CR, LF or NUL' : 'undef') . "\n"
                    unless defined $v && $v !~ /[\r\n\0]/;
                if ($lk eq 'content-length') { $has_len = 1 }
                elsif ($lk eq 'transfer-encoding') { $general = 1; last }   # see _send_head
                $out .= "$k: $v\r\n";
            }
            unless ($general) {
                my $data = do { no warnings 'uninitialized'; join '', @$body };    # undef: ''
                die "wide character in the response body\n"
                    if utf8::is_utf8($data) && !utf8::downgrade($data, 1);
                $out .= $self->{extra_headers};
                my $n = @$h / 2 + $self->{extra_count};
                my $no_body = $st < 200 || $NO_BODY{$st};
                if (!$has_len && !$no_body) {
                    $out .= 'Content-Length: ' . length($data) . "\r\n";
                    $n++;
                }
                $out .= "\r\n";
                die "wide character in the response headers\n" unless utf8::downgrade($out, 1);
                ($status, $headers, $head_bytes) = ($st, $n, length $out);
                unless ($no_body || $head_only) {
                    $out .= $data;
                    $tx = length $data;
                }
                $sent = 1;
                my $w = syscall($SYS_WRITE, $fd, $out, length $out);
                if ($w != length $out) {                  # the rest through the general path's loop
                    die Plack::Handler::Pymaster::Gone->new("$!" || 'timeout') if $w < 0 && $! != EINTR;
                    ($c, $fd) = ($self->_adopt($fd), $self->{cfd}) unless $c;
                    _write_all($c, $w > 0 ? substr($out, $w) : $out);
                }
            }
        }
        if ($general) {
            ($c, $fd) = ($self->_adopt($fd), $self->{cfd}) unless $c;
            $req = _fast_req($c, $l, $start, $proto, $head_only);
            $self->_respond($req, $res);
        }
        1;
    };
    if (!$ok) {
        my $err = $@;
        $failed = 1;
        $req ||= do {
            ($c, $fd) = ($self->_adopt($fd), $self->{cfd}) unless $c;
            my $r = _fast_req($c, $l, $start, $proto, $head_only, $sent);
            @$r{qw(status headers head_bytes tx)} = ($status, $headers, $head_bytes, $tx);
            $r;
        };
        $self->_app_failed($req, $err, $method, $uri, $env{REMOTE_ADDR});
    }
    # the connection is closed
    if ($c) { syscall($SYS_DUP3, $self->{nullfd}, $fd, CLOEXEC) } else { syscall($SYS_CLOSE, $fd) }
    my $now = $self->{now} = Time::HiRes::time();
    my $elapsed = $now - $start;
    $self->{requests}++;
    ($status, $headers, $head_bytes, $tx) = @$req{qw(status headers head_bytes tx)} if $req;
    if ($self->{sb}) {
        my $n = ++$slot->[2];
        @$slot[1, 3] = (ST_IDLE, 0.0);
        $slot->[4]++ if $failed;
        $slot->[5] += $tx + $head_bytes;    # uWSGI's tx: head + body
        $slot->[6] += $elapsed;
        $slot->[7] = $n == 1 ? $elapsed : $slot->[7] + ($elapsed - $slot->[7]) / ($n < 100 ? $n : 100);
        if (my $map = $self->{map}) { substr($$map, $self->{sb_off}, 64, pack $SLOT_HEAD, @$slot) }
        else { $self->_slot_write }
    }
    if ($self->{log} || $self->{log_some} && $self->_wanted($status, $elapsed)) {
        $req ||= {};
        @$req{qw(status headers head_bytes tx nvars pktsize start)}
            = ($status, $headers, $head_bytes, $tx, @kv / 2, $size, $start);
        $self->_log_request($req, \%env, $elapsed);
    }
    if (my $handlers = $env{'psgix.cleanup.handlers'}) {
        for my $handler (@$handlers) {
            eval { $handler->(\%env); 1 } or do {
                (my $err = "$@") =~ s/\s+\z//;
                _log("[pymaster-perl error] cleanup handler for $method $uri: $err");
            };
        }
    }
    if ($env{'psgix.harakiri.commit'}) {
        _log("psgix.harakiri.commit requested: worker $self->{wid} (pid: $$) exits");
        $STOPPING = 1;
    }
    $self->_recycle if $self->{recycle};
    return 1;
}

# The connection (a raw fd) moved onto the slot handle's fd, for Perl I/O; returns the handle.
sub _adopt {
    my ($self, $fd) = @_;
    syscall($SYS_DUP3, $fd, $self->{cfd}, CLOEXEC) >= 0
        or _log("dup3(): $! [worker $self->{wid}]");
    syscall($SYS_CLOSE, $fd);
    return $self->{cslot};
}

# The general path's request state, for what the fast path hands over to it.
sub _fast_req {
    my ($c, $l, $start, $proto, $head, $sent) = @_;
    return { c => $c, l => $l, start => $start, proto => $proto, head => $head, sent => $sent,
             tx => 0, headers => 0, head_bytes => 0, status => 500,
             conn => { c => $c, l => $l, buf => '', peer => getpeername($c), slot => 1, closed => 1 } };
}

sub _dispatch {
    my ($self, $req, $env) = @_;
    $env->{SCRIPT_NAME} = '' if !defined $env->{SCRIPT_NAME} || $env->{SCRIPT_NAME} eq '/';
    $env->{REQUEST_METHOD} = 'GET' unless defined $env->{REQUEST_METHOD} && length $env->{REQUEST_METHOD};
    @$env{@PSGI_KEYS} = (@PSGI_VALUES, [1, 1], []);

    my $method = $env->{REQUEST_METHOD};
    my $uri = $env->{REQUEST_URI};
    $self->_slot_begin($req->{start}, "$method $uri");
    $req->{proto} = $env->{SERVER_PROTOCOL} || 'HTTP/1.0';
    $req->{env} = $env;                        # psgix.harakiri.commit, read by _send_head
    $req->{head} = $method eq 'HEAD';
    $req->{tx} = $req->{headers} = $req->{head_bytes} = 0;
    $req->{status} = 500;

    my $failed = 0;
    my $ok = eval { $self->_respond($req, $self->{app}->($env)); 1 };
    # psgix.io taken, then a delayed response that never called the responder (Catalyst's
    # io_fh, Protocol::WebSocket apps) or a 101: the connection is the app's, as on Plack's
    # servers. Nothing more is written to it (no 500, no chunk end, no keep-alive) and the
    # server drops its references without closing it: it closes when the app lets go of it
    # (at once if the app kept nothing). An app that dies otherwise gets its 500, as on
    # Starman (frameworks such as Mojolicious read every env value, psgix.io included).
    my $io = $req->{io};
    if ($io && $io->[1] && ($req->{unanswered} || $req->{status} == 101)) {
        $req->{hijacked} = 1;
        my $err = $@;
        if (!$ok && ref $err ne 'Plack::Handler::Pymaster::Gone') {
            $err =~ s/\s+\z//;
            _log("[pymaster-perl error] $method $uri: $err");
        }
        $req->{status} = 0 unless $req->{sent};
        $ok = 1;
    }
    elsif (!$ok) {
        my $err = $@;
        $failed = 1;
        $self->_app_failed($req, $err, $method, $uri, $env->{REMOTE_ADDR});
    }
    if ($req->{hijacked}) {
        my $conn = $req->{conn};
        delete @$conn{qw(c buf)};
        $conn->{closed} = 1;
        delete $req->{c};
        $req->{keep} = 0;
    }
    elsif ($req->{chunked} && !$failed) {
        eval { _finish($req); 1 } or $failed = 1;
    }
    # a streamed body that does not match the app's Content-Length: the connection is unframed
    $req->{keep} = 0 if defined $req->{clen} && !$req->{head} && $req->{tx} ne $req->{clen}
        && !($req->{status} < 200 || $NO_BODY{$req->{status}});
    my $keep = $req->{keep} && !$failed;
    $self->_close($req->{conn}) unless $keep;   # the client sees the end of the response now
    my $now = $self->{now} = Time::HiRes::time();
    my $elapsed = $now - $req->{start};
    $self->{requests}++;
    $self->_slot_end($elapsed, $req->{tx} + $req->{head_bytes}, $failed);    # uWSGI's tx: head + body
    $self->_log_request($req, $env, $elapsed)
        if $self->{log} || $self->{log_some} && $self->_wanted($req->{status}, $elapsed);

    for my $handler (@{ $env->{'psgix.cleanup.handlers'} || [] }) {
        eval { $handler->($env); 1 } or do {
            (my $err = "$@") =~ s/\s+\z//;
            _log("[pymaster-perl error] cleanup handler for $method $uri: $err");
        };
    }
    if ($env->{'psgix.harakiri.commit'}) {
        _log("psgix.harakiri.commit requested: worker $self->{wid} (pid: $$) exits");
        $STOPPING = 1;
    }
    $self->_recycle if $self->{recycle};
    return $keep;
}

sub _send_500 {
    my ($self, $req) = @_;
    my $body = 'Internal Server Error';
    my $head = "$req->{proto} 500 Internal Server Error\r\nContent-Type: text/plain\r\n"
             . 'Content-Length: ' . length($body) . "\r\n"
             . ($req->{l}{http} ? "Connection: close\r\n" : '') . "\r\n";
    $req->{keep} = 0;
    $req->{status} = 500;
    $req->{headers} = $req->{l}{http} ? 3 : 2;
    $req->{head_bytes} = length $head;
    $req->{sent} = 1;
    eval {
        _write_all($req->{c}, $req->{head} ? $head : $head . $body);
        $req->{tx} = $req->{head} ? 0 : length $body;
    };
}

sub _respond {
    my ($self, $req, $res) = @_;
    if (ref $res eq 'ARRAY') {
        die "the app returned an array of " . @$res . " elements, expected [status, headers, body]\n"
            unless @$res == 3;
        return $self->_respond_full($req, $res);
    }
    if (ref $res eq 'CODE') {
        my $called = 0;
        $res->(sub {
            my $r = shift;
            die "the responder got " . (ref $r || 'a non-reference') . ", expected an array\n"
                unless ref $r eq 'ARRAY';
            $called = 1;
            return $self->_respond_full($req, $r) if @$r == 3;
            die "the responder got " . @$r . " elements, expected 2 or 3\n" unless @$r == 2;
            $self->_send_head($req, $r->[0], $r->[1], undef);
            return Plack::Handler::Pymaster::Writer->new($req);
        });
        if (!$called && $req->{io} && $req->{io}[1]) {     # psgix.io taken: see _dispatch
            $req->{unanswered} = 1;
            return;
        }
        die "the delayed response never called the responder\n" unless $called;
        return;
    }
    die 'the app returned ' . (defined $res ? "'$res'" : 'undef')
        . ", expected an array or code reference\n";
}

sub _no_body {
    my ($req, $status) = @_;
    return $req->{head} || $status < 200 || $NO_BODY{$status};
}

# Build and send the status line and headers. $length: the Content-Length to add when the
# app gave none (undef: unknown). On HTTP this decides the framing: a known length keeps the
# connection alive (if the client wants it), an unknown one is sent chunked to an HTTP/1.1
# client and closes the connection for HTTP/1.0.
sub _send_head {
    my ($self, $req, $status, $headers, $length, $body) = @_;
    my $reason = $REASON{$status // ''} // _reason($status);
    die "headers must be an array reference of an even number of elements\n"
        unless ref $headers eq 'ARRAY' && @$headers % 2 == 0;
    my $http = $req->{l}{http};
    my $out = "$req->{proto} $status $reason\r\n";
    my ($count, $has_length, $has_te) = (0, 0, 0);
    for (my $i = 0; $i < @$headers; $i += 2) {
        my ($k, $v) = @$headers[$i, $i + 1];
        my $lk = defined $k && $HEADER{$k} || _header_name($k);
        die "invalid value for header $k: " . (defined $v ? 'it contains CR, LF or NUL' : 'undef') . "\n"
            unless defined $v && $v !~ /[\r\n\0]/;
        if ($http && $lk eq 'connection' && $status != 101) {    # 101: the app's Upgrade
            $req->{keep} = 0 if $v =~ /\bclose\b/i;
            next;
        }
        if ($lk eq 'content-length') {
            $has_length = 1;
            $req->{clen} = $v;
        }
        $has_te = 1 if $lk eq 'transfer-encoding';
        $out .= "$k: $v\r\n";
        $count++;
    }
    if ($has_te && !$http && $out =~ s/^Transfer-Encoding:[ \t]*chunked[ \t]*\r\n//mi) {
        # On a uwsgi socket the response goes to nginx, which does not decode chunks from a
        # uwsgi upstream: an app's own chunked body (Mojo::Server::PSGI sends one) would
        # reach the client chunk-encoded. Its payload is sent instead, close-delimited.
        $count--;
        $req->{dechunk} = { buf => '', left => 0 };
        if (defined $body) {
            $body = _dechunk_out($req, $body);
            $length = length $body;
        }
    }
    $out .= $self->{extra_headers};
    $count += $self->{extra_count};
    my $no_body = $status < 200 || $NO_BODY{$status};
    if (!$has_length && defined $length && !$no_body) {
        $out .= "Content-Length: $length\r\n";
        $count++;
        $has_length = 1;
    }
    if ($http) {
        my $clen = $req->{clen};
        if (defined $clen && defined $body && $clen ne length $body && !$no_body) {
            # the app's Content-Length is wrong: send no more than it says, and close when
            # the body is shorter, so the next response on the connection stays framed
            if ($clen =~ /^\d+$/ && $clen < length $body) { $body = substr $body, 0, $clen }
            else { $req->{keep} = 0 }
        }
        if ($no_body || $has_length || $req->{head}) {
            # framed: the connection may stay open
        }
        elsif (!$has_te && $req->{proto} eq 'HTTP/1.1') {
            $out .= "Transfer-Encoding: chunked\r\n";
            $count++;
            $req->{chunked} = 1;
        }
        else {
            $req->{keep} = 0;                 # the body ends when the connection does
        }
        $req->{keep} = 0 if $STOPPING || $status == 101 || $req->{env}{'psgix.harakiri.commit'}
            || $self->{max_requests} && $self->{requests} + 1 >= $self->{max_requests}
                && Time::HiRes::time() - $self->{spawned} >= $self->{min_lifetime};
        if ($status == 101) {
            # switching protocols: the connection is no longer HTTP (no Connection: close)
        }
        elsif (!$req->{keep}) {
            $out .= "Connection: close\r\n";
            $count++;
        }
        elsif ($req->{proto} ne 'HTTP/1.1') {
            $out .= "Connection: keep-alive\r\n";
            $count++;
        }
    }
    $out .= "\r\n";
    die "wide character in the response headers\n" unless utf8::downgrade($out, 1);
    $req->{status} = $status;
    $req->{headers} = $count;
    $req->{head_bytes} = length $out;
    if (defined $body && !$no_body && !$req->{head}) {
        $out .= $body;
        $req->{tx} = length $body;
    }
    $req->{sent} = 1;
    _write_all($req->{c}, $out);
}

# The reason phrase of a checked status (remembered, so only valid statuses are in %REASON).
sub _reason {
    my $status = shift;
    die "invalid status '" . (defined $status ? $status : 'undef') . "', expected an integer >= 100\n"
        unless defined $status && $status =~ /^[1-9]\d\d$/;
    return $REASON{$status} = HTTP::Status::status_message($status) // '';
}

# A checked header name, lowercased (remembered: apps send the same few names every time).
sub _header_name {
    my $k = shift;
    die 'invalid header name ' . (defined $k ? "'$k'" : 'undef') . "\n"
        unless defined $k && $k =~ /^[A-Za-z][A-Za-z0-9_-]*$/;
    %HEADER = () if keys %HEADER >= 1000;
    return $HEADER{$k} = lc $k;
}

sub _respond_full {
    my ($self, $req, $res) = @_;
    my ($status, $headers, $body) = @$res;
    if (ref $body eq 'ARRAY') {
        my $data = do { no warnings 'uninitialized'; join '', @$body };    # undef: ''
        die "wide character in the response body\n"
            if utf8::is_utf8($data) && !utf8::downgrade($data, 1);
        return $self->_send_head($req, $status, $headers, length $data, $data);
    }
    die "the response body is neither an array nor a handle\n" unless Scalar::Util::blessed($body)
        || Scalar::Util::reftype($body) && Scalar::Util::reftype($body) eq 'GLOB';
    my $fd = Plack::Util::is_real_fh($body) ? fileno $body : undef;
    my $length;
    if (defined $fd) {
        my ($size, $pos) = (-s $body, tell $body);
        $length = $size - ($pos > 0 ? $pos : 0) if defined $size && -f _;
    }
    my $ok = eval {
        $self->_send_head($req, $status, $headers, $length, undef);
        unless (_no_body($req, $status)) {
            if (!(defined $fd && $self->_sendfile($req, $body)) && !$self->_send_path($req, $body)) {
                $self->_send_lines($req, $body);
            }
        }
        1;
    };
    my $err = $@;
    eval { $body->close } if Scalar::Util::blessed($body) || defined fileno $body;
    die $err unless $ok;
}

sub _send_lines {
    my ($self, $req, $body) = @_;
    local $/ = \BLOCK;
    while (defined(my $chunk = $body->getline)) {
        next unless length $chunk;
        die "wide character in the response body\n"
            if utf8::is_utf8($chunk) && !utf8::downgrade($chunk, 1);
        _write_body($req, $chunk);
    }
}

# An object with ->path but no real fd: serve the named file.
sub _send_path {
    my ($self, $req, $body) = @_;
    return 0 unless Scalar::Util::blessed($body) && $body->can('path');
    my $path = $body->path;
    return 0 unless defined $path && -f $path;
    open my $fh, '<:raw', $path or return 0;
    $self->_sendfile($req, $fh) or $self->_send_lines($req, $fh);
    return 1;
}

# sendfile(2) from the handle's current position; 0 when sendfile is not usable here.
sub _sendfile {
    my ($self, $req, $fh) = @_;
    my $in = fileno $fh;
    return 0 unless $SYS_SENDFILE && defined $in && !$req->{chunked} && !$req->{dechunk};
    my $pos = tell $fh;
    sysseek $fh, $pos, 0 if $pos > 0;             # PerlIO may have read ahead
    my $out = fileno $req->{c};
    my $first = 1;
    while (1) {
        my $n = syscall($SYS_SENDFILE, $out, $in, 0, 1 << 20);
        if ($n < 0) {
            next if $! == EINTR;
            return 0 if $first && !$req->{tx};    # e.g. EINVAL: fall back to read/write
            die Plack::Handler::Pymaster::Gone->new("sendfile(): $!");
        }
        last if $n == 0;
        $first = 0;
        $req->{tx} += $n;
        $req->{sendfile} = 1;
    }
    return 1;
}

# Body bytes of a streamed response: as they are, or as one chunk when chunked.
sub _write_body {
    my ($req, $data) = @_;
    if ($req->{dechunk}) {
        $data = _dechunk_out($req, $data);
        return unless length $data;
    }
    _write_all($req->{c}, $req->{chunked}
        ? sprintf('%x', length $data) . "\r\n$data\r\n" : $data);
    $req->{tx} += length $data;
}

# The payload of an app's own chunked body, fed in pieces of any size (see _send_head);
# chunk extensions and trailers are dropped.
sub _dechunk_out {
    my ($req, $data) = @_;
    my $st = $req->{dechunk};
    return '' if $st->{done};
    $st->{buf} .= $data;
    my $out = '';
    while (1) {
        if ($st->{left}) {
            my $take = substr $st->{buf}, 0, $st->{left}, '';
            $out .= $take;
            last if $st->{left} -= length $take;
            $st->{crlf} = 1;
        }
        if ($st->{crlf}) {
            last if length $st->{buf} < 2;
            substr($st->{buf}, 0, 2, '');
            $st->{crlf} = 0;
        }
        my $eol = index $st->{buf}, "\r\n";
        last if $eol < 0;
        my ($size) = substr($st->{buf}, 0, $eol) =~ /^([0-9A-Fa-f]+)/
            or die "the app's chunked response body is malformed\n";
        substr($st->{buf}, 0, $eol + 2, '');
        if (!hex $size) { @$st{qw(done buf)} = (1, ''); last }
        $st->{left} = hex $size;
    }
    return $out;
}

# The end of a chunked body (once).
sub _finish {
    my $req = shift;
    return unless $req->{chunked} && !$req->{finished}++;
    _write_all($req->{c}, "0\r\n\r\n");
}

sub _write_all {
    my ($c, $data) = @_;
    my ($off, $len) = (0, length $data);
    while ($off < $len) {
        my $w = syswrite $c, $data, $len - $off, $off;
        if (!defined $w) {
            next if $! == EINTR;
            die Plack::Handler::Pymaster::Gone->new("$!" || 'timeout');
        }
        $off += $w;
    }
    return $len;
}

# -- the request log and recycling (as pymaster/workers/wsgi/reqlog.py and contract.py) -----

# With --disable-logging: is this request logged all the same (--log-4xx/5xx/slow)?
sub _wanted {
    my ($self, $status, $elapsed) = @_;
    return $self->{log_4xx} && $status >= 400 && $status < 500
        || $self->{log_5xx} && $status >= 500
        || $self->{log_slow} && $elapsed * 1000 > $self->{log_slow};
}

my $PAGE = POSIX::sysconf(POSIX::_SC_PAGESIZE()) || 4096;

# (address space, rss) in bytes, from /proc/self/statm (one small read)
sub _memory {
    open my $fh, '<', '/proc/self/statm' or return (0, 0);
    my ($size, $rss) = split ' ', scalar(<$fh>) // '';
    return (($size || 0) * $PAGE, ($rss || 0) * $PAGE);
}

# After each request: recycle as Recycling.reason decides, with its log lines.
sub _recycle {
    my $self = shift;
    return if ($self->{now} || Time::HiRes::time()) - $self->{spawned} < $self->{min_lifetime};
    if ($self->{max_requests} && $self->{requests} >= $self->{max_requests}) {
        _log("...The work of process $$ is done. Seeya!");
    }
    else {
        my ($as, $rss) = $self->{rss_limit} || $self->{as_limit} ? _memory() : ();
        if ($self->{rss_limit} && $rss > $self->{rss_limit}) {
            _log("worker $self->{wid} (pid: $$) RSS $rss bytes over reload-on-rss "
                 . "$self->{rss_limit} bytes, recycling");
        }
        elsif ($self->{as_limit} && $as > $self->{as_limit}) {
            _log("worker $self->{wid} (pid: $$) address space $as bytes over reload-on-as "
                 . "$self->{as_limit} bytes, recycling");
        }
        else {
            return;
        }
    }
    $STOPPING = 1;
}

sub _addr {
    my ($self, $env) = @_;
    return $env->{HTTP_X_FORWARDED_FOR} if $self->{forwarded} && $env->{HTTP_X_FORWARDED_FOR};
    return $env->{REMOTE_ADDR} // '';
}

sub _log_request {
    my ($self, $req, $env, $elapsed) = @_;
    if (my $silent = $self->{silent}) {
        for (@$silent) { return if ($env->{$_->[0]} // '') =~ $_->[1] }
    }
    return _log_req($self->_custom($req, $env, $elapsed)) if defined $self->{format};
    my $total = $self->_instance_requests;
    my $prefix = '';
    if ($self->{memory}) {
        my ($vsz, $rss) = _memory();
        $prefix = sprintf '{address space usage: %d bytes/%dMB} {rss usage: %d bytes/%dMB} ',
            $vsz, $vsz >> 20, $rss, $rss >> 20;
    }
    _log_req(sprintf "%s[pid: %d|app: 0|req: %d/%d] %s (%s) {%d vars in %d bytes} [%s] %s %s => "
        . "generated %d bytes in %s%s(%s %d) %d headers in %d bytes (1 switches on core 0)",
        $prefix, $$, $self->{requests}, $total, $self->_addr($env), $env->{REMOTE_USER} // '',
        ($req->{nvars} || 0) * 2, $req->{pktsize} || 0, scalar localtime int $req->{start},
        $env->{REQUEST_METHOD}, $env->{REQUEST_URI} // '', $req->{tx},
        $self->{micros} ? int($elapsed * 1e6) . ' micros' : int($elapsed * 1000) . ' msecs',
        $req->{sendfile} ? ' via sendfile() ' : ' ', $env->{SERVER_PROTOCOL} // '',
        $req->{status}, $req->{headers}, $req->{head_bytes});
}

# --logformat: the `%(name)` fields of reqlog.py (RequestLog.custom); an unknown name is `-`.
my @MONTHS = qw(Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec);    # %b without a locale
my %FIELD = (
    uri      => sub { $_[1]{REQUEST_URI} || ($_[1]{PATH_INFO} // '') },
    method   => sub { $_[1]{REQUEST_METHOD} // '' },
    user     => sub { $_[1]{REMOTE_USER} // '-' },
    addr     => sub { $_[0]->_addr($_[1]) },
    host     => sub { $_[1]{HTTP_HOST} // '' },
    proto    => sub { $_[1]{SERVER_PROTOCOL} // '' },
    uagent   => sub { $_[1]{HTTP_USER_AGENT} // '' },
    referer  => sub { $_[1]{HTTP_REFERER} // '' },
    status   => sub { $_[2]{status} },
    rsize    => sub { $_[2]{tx} },
    hsize    => sub { $_[2]{head_bytes} },
    size     => sub { $_[2]{tx} + $_[2]{head_bytes} },
    cl       => sub { $_[1]{CONTENT_LENGTH} || '0' },
    micros   => sub { int($_[3] * 1e6) },
    msecs    => sub { int($_[3] * 1000) },
    secs     => sub { sprintf '%.6f', $_[3] },
    time     => sub { int $_[2]{start} },
    epoch    => sub { int Time::HiRes::time() },
    ctime    => sub { scalar localtime int $_[2]{start} },
    ltime    => sub { _ltime($_[2]{start}) },
    ftime    => sub {
        $_[0]{ftime} ? POSIX::strftime($_[0]{ftime}, localtime int $_[2]{start}) : _ltime($_[2]{start});
    },
    pid      => sub { $$ },
    wid      => sub { $_[0]{wid} },
    switches => sub { 1 },
    vars     => sub { ($_[2]{nvars} || 0) * 2 },
    core     => sub { 0 },
    pktsize  => sub { $_[2]{pktsize} || 0 },
    headers  => sub { $_[2]{headers} },
    rss      => sub { (_memory())[1] },
    vsz      => sub { (_memory())[0] },
    rssM     => sub { (_memory())[1] >> 20 },
    vszM     => sub { (_memory())[0] >> 20 },
);

sub _ltime {
    my @t = localtime int shift;
    POSIX::strftime('%d/', @t) . $MONTHS[$t[4]] . POSIX::strftime('/%Y:%H:%M:%S %z', @t);
}

sub _custom {
    my ($self, $req, $env, $elapsed) = @_;
    (my $line = $self->{format}) =~ s{%\(([^)]+)\)}{
        my $name = $1;
        my $value = substr($name, 0, 4) eq 'var.' ? $env->{substr $name, 4}
                  : $FIELD{$name} ? $FIELD{$name}->($self, $env, $req, $elapsed) : undef;
        defined $value ? $value : '-';
    }ge;
    return $line;
}

package Plack::Handler::Pymaster::Gone;
# Raised when the client went away mid-response: logged, not answered. Made right after the
# failed write, so $! is still its error.
sub new {
    my ($class, $msg) = @_;
    my $epipe = $! == Errno::EPIPE() ? 1 : 0;
    $msg = 'timeout' if $! == Errno::EAGAIN();
    bless { msg => $msg, epipe => $epipe }, $class;
}

package Plack::Handler::Pymaster::IO;
# psgix.io as a tied hash element: [the socket, taken]. Fetching it marks it taken; an app
# that stores over it replaces the value.
sub TIESCALAR { my ($class, $c) = @_; bless [$c, 0], $class }
sub FETCH { $_[0][1] = 1; $_[0][0] }
sub STORE { $_[0][0] = $_[1] }

package Plack::Handler::Pymaster::Writer;
# The streaming writer handed to `$responder->([$status, $headers])`.
sub new { my ($class, $req) = @_; bless { req => $req }, $class }

sub write {
    my ($self, $data) = @_;
    my $req = $self->{req};
    return if $self->{closed} || !defined $data || !length $data
        || Plack::Handler::Pymaster::_no_body($req, $req->{status});
    die "wide character in a streamed write\n"
        if utf8::is_utf8($data) && !utf8::downgrade($data, 1);
    Plack::Handler::Pymaster::_write_body($req, $data);
    return 1;
}

sub close {
    my $self = shift;
    return if $self->{closed}++;
    Plack::Handler::Pymaster::_finish($self->{req});
    return;
}

sub poll_cb {
    my ($self, $cb) = @_;
    $cb->($self) until $self->{closed};
}

1;
