package Plack::App::uWSGI;
# A PSGI application that forwards each request to a uwsgi-protocol backend (a uWSGI or
# pymaster worker socket, or a fastrouter) and relays the backend's HTTP-style answer.
#
# Written for pymaster from the interface the seed's frontend.psgi uses:
#
#   Plack::App::uWSGI->new(
#       pass      => "host:port" | "/path/to/unix.sock",
#       param     => { UWSGI_FASTROUTER_KEY => "psgi_cluster" },   # extra uwsgi vars
#       modifier1 => 0,        # default 0 (5 is PSGI; a fastrouter uses its nodes' own)
#       timeout   => 30,       # seconds, per connect / write / read wait
#   )->to_app;
#
# Per request: the CGI variables of the PSGI env (under a Plack `mount`, SCRIPT_NAME and
# PATH_INFO as URLMap set them) plus `param` go in one uwsgi packet, followed by the
# request body; the backend's answer (`HTTP/1.x 200 OK` or CGI `Status: 200 OK` head,
# then the body until it closes) comes back as a streamed PSGI response. A backend that
# refuses the connection or closes without a valid head gives 502, a wait longer than
# `timeout` before the head gives 504. Anything the backend itself answers (such as a
# fastrouter's `503 no node for key`) is passed through.
use strict;
use warnings;
use parent 'Plack::Component';
use Plack::Util::Accessor qw(pass param modifier1 modifier2 timeout);
use Errno qw(EINTR EAGAIN EWOULDBLOCK EINPROGRESS);
use IO::Select;
use IO::Socket::INET;
use IO::Socket::UNIX;
use Socket qw(SOCK_STREAM);
use Time::HiRes ();

our $VERSION = '0.01';

my $READ_SIZE = 65536;

# PSGI env keys forwarded as uwsgi vars besides every HTTP_* header.
my @CGI_KEYS = qw(
    REQUEST_METHOD REQUEST_URI PATH_INFO QUERY_STRING SCRIPT_NAME
    SERVER_NAME SERVER_PORT SERVER_PROTOCOL REMOTE_ADDR REMOTE_PORT REMOTE_USER
    CONTENT_TYPE CONTENT_LENGTH
);

# Response headers that describe the backend connection, not the resource: the PSGI server
# frames the response to its own client itself.
my %HOP_BY_HOP = map { $_ => 1 } qw(connection keep-alive transfer-encoding status);

sub prepare_app {
    my $self = shift;
    defined $self->pass && length $self->pass
        or die "Plack::App::uWSGI: 'pass' (host:port or unix socket path) is required\n";
    $self->param({}) unless $self->param;
    ref $self->param eq 'HASH'
        or die "Plack::App::uWSGI: 'param' must be a hash reference\n";
    for my $name (qw(modifier1 modifier2)) {
        my $value = $self->$name;
        $self->$name($value = 0) unless defined $value && length $value;
        $value =~ /^\d+$/ && $value <= 255
            or die "Plack::App::uWSGI: '$name' must be 0..255, not '$value'\n";
    }
    $self->timeout(30) unless defined $self->timeout && $self->timeout > 0;
}

sub call {
    my ($self, $env) = @_;
    local $SIG{PIPE} = 'IGNORE';

    my $packet = eval { $self->build_packet($env) };
    return _error(500, "cannot build the uwsgi request: $@") unless defined $packet;

    my ($sock, $err) = $self->connect_backend;
    return $err unless $sock;

    # A backend may answer (and close) before it has read the whole body; the answer it
    # gave is still the one to relay, so a failed body write is not fatal by itself.
    my $sent = $self->write_all($sock, $packet);
    return $sent if ref $sent;
    if ($sent) {
        $sent = $self->send_body($sock, $env);
        return $sent if ref $sent;
    }

    my ($status, $headers, $rest, $error) = $self->read_head($sock);
    return $error if $error;
    my $body = _body_reader($self, $sock, $rest, $headers);
    @$headers = _strip_hop_by_hop(@$headers);

    unless ($env->{'psgi.streaming'}) {
        my @chunks;
        while (defined(my $chunk = $body->())) { push @chunks, $chunk }
        return [$status, $headers, \@chunks];
    }
    return sub {
        my $respond = shift;
        my $writer = $respond->([$status, $headers]);
        local $SIG{PIPE} = 'IGNORE';
        while (defined(my $chunk = $body->())) {
            $writer->write($chunk);
        }
        $writer->close;
    };
}

# ---------------------------------------------------------------------------- request

sub uwsgi_vars {
    my ($self, $env) = @_;
    my %vars;
    for my $key (@CGI_KEYS, grep { /^HTTP_/ } keys %$env) {
        $vars{$key} = $env->{$key} if defined $env->{$key} && !ref $env->{$key};
    }
    $vars{REQUEST_URI} = _request_uri($env) unless defined $vars{REQUEST_URI};
    $vars{$_} = '' for grep { !defined $vars{$_} } qw(QUERY_STRING SCRIPT_NAME PATH_INFO);
    my $scheme = $env->{'psgi.url_scheme'} || 'http';
    $vars{REQUEST_SCHEME} = $scheme;
    $vars{HTTPS} = 'on' if $scheme eq 'https';
    my $param = $self->param;
    $vars{$_} = $param->{$_} for keys %$param;
    return \%vars;
}

sub build_packet {
    my ($self, $env) = @_;
    my $vars = $self->uwsgi_vars($env);
    my $block = '';
    for my $key (sort keys %$vars) {
        my ($k, $v) = ($key, $vars->{$key});
        utf8::encode($k) if utf8::is_utf8($k);
        utf8::encode($v) if utf8::is_utf8($v);
        die "uwsgi var $key is longer than 65535 bytes\n" if length($k) > 65535 || length($v) > 65535;
        $block .= pack('v', length $k) . $k . pack('v', length $v) . $v;
    }
    die "uwsgi vars take " . length($block) . " bytes, more than 65535\n" if length($block) > 65535;
    return pack('CvC', $self->modifier1, length $block, $self->modifier2) . $block;
}

sub _request_uri {
    my $env = shift;
    my $uri = ($env->{SCRIPT_NAME} // '') . ($env->{PATH_INFO} // '');
    $uri .= "?$env->{QUERY_STRING}" if defined $env->{QUERY_STRING} && length $env->{QUERY_STRING};
    return $uri;
}

# Copy CONTENT_LENGTH bytes of psgi.input to the backend. Returns true when all was sent,
# 0 when the backend stopped reading (its answer is read next), an error response on
# a timeout.
sub send_body {
    my ($self, $sock, $env) = @_;
    my $left = $env->{CONTENT_LENGTH};
    return 1 unless defined $left && $left =~ /^\d+$/ && $left > 0;
    my $input = $env->{'psgi.input'} or return 1;
    while ($left > 0) {
        my $got = $input->read(my $buf, $left < $READ_SIZE ? $left : $READ_SIZE);
        last unless $got;    # the client sent less than it announced
        $left -= $got;
        my $sent = $self->write_all($sock, $buf);
        return $sent unless $sent && !ref $sent;
    }
    return 1;
}

# ---------------------------------------------------------------------------- socket I/O

sub connect_backend {
    my $self = shift;
    my $pass = $self->pass;
    my $timeout = $self->timeout;
    my $sock;
    if ($pass =~ m{^(?:unix:)?(/.*)$}) {
        my $path = $1;
        $sock = IO::Socket::UNIX->new(Peer => $path, Type => SOCK_STREAM, Timeout => $timeout);
    } elsif ($pass =~ /^\[?([^\[\]]*?)\]?:(\d+)$/) {
        my ($host, $port) = (length $1 ? $1 : '127.0.0.1', $2);
        $sock = IO::Socket::INET->new(PeerAddr => $host, PeerPort => $port,
                                      Proto => 'tcp', Timeout => $timeout);
    } else {
        return (undef, _error(502, "bad pass address '$pass' (want host:port or /unix/path)"));
    }
    unless ($sock) {
        my $why = $@ || "$!";
        $why =~ s/^IO::Socket::\w+: //;
        my $code = $why =~ /timeout|timed out/i ? 504 : 502;
        return (undef, _error($code, "cannot connect to $pass: $why"));
    }
    $sock->blocking(0);
    return ($sock, undef);
}

# Wait until $sock is readable ('r') or writable ('w'); false after `timeout` seconds.
sub wait_io {
    my ($self, $sock, $mode) = @_;
    my $deadline = Time::HiRes::time() + $self->timeout;
    my $sel = IO::Select->new($sock);
    while (1) {
        my $left = $deadline - Time::HiRes::time();
        return 0 if $left <= 0;
        my @ready = $mode eq 'r' ? $sel->can_read($left) : $sel->can_write($left);
        return 1 if @ready;
        return 0 unless $! == EINTR;
    }
}

# True when all of $data was written, 0 when the peer closed its side, an error response
# (504) on a timeout.
sub write_all {
    my ($self, $sock, $data) = @_;
    my $off = 0;
    while ($off < length $data) {
        my $n = syswrite($sock, $data, length($data) - $off, $off);
        if (defined $n) { $off += $n; next }
        next if $! == EINTR;
        return 0 unless $! == EAGAIN || $! == EWOULDBLOCK;
        $self->wait_io($sock, 'w')
            or return _error(504, "timed out after " . $self->timeout . " s sending to " . $self->pass);
    }
    return 1;
}

# One read: (bytes) or ('') at end of stream, (undef, 'timeout') when nothing came within
# `timeout` seconds, (undef, error text) on an error.
sub read_some {
    my ($self, $sock) = @_;
    while (1) {
        my $n = sysread($sock, my $buf, $READ_SIZE);
        return $n ? $buf : '' if defined $n;
        next if $! == EINTR;
        return (undef, "$!") unless $! == EAGAIN || $! == EWOULDBLOCK;
        $self->wait_io($sock, 'r') or return (undef, 'timeout');
    }
}

# ---------------------------------------------------------------------------- response

# Read the backend's response head. Returns (status, [headers], body bytes already read)
# or (undef, undef, undef, error response).
sub read_head {
    my ($self, $sock) = @_;
    my $buf = '';
    while (1) {
        if ($buf =~ /\r?\n\r?\n/) {
            my ($head, $rest) = split /\r?\n\r?\n/, $buf, 2;
            my ($status, $headers) = _parse_head($head);
            return (undef, undef, undef,
                    _error(502, "bad response head from " . $self->pass . ": " . _excerpt($head)))
                unless $status;
            if ($status >= 100 && $status < 200 && $status != 101) {   # interim: 100 Continue
                $buf = $rest;
                next;
            }
            return ($status, $headers, $rest);
        }
        my ($chunk, $err) = $self->read_some($sock);
        if (!defined $chunk) {
            return (undef, undef, undef, $err eq 'timeout'
                ? _error(504, "no response from " . $self->pass . " within " . $self->timeout . " s")
                : _error(502, "reading from " . $self->pass . ": $err"));
        }
        if ($chunk eq '') {
            return (undef, undef, undef, _error(502, length $buf
                ? "incomplete response head from " . $self->pass . ": " . _excerpt($buf)
                : "empty response from " . $self->pass));
        }
        $buf .= $chunk;
        return (undef, undef, undef, _error(502, "response head from " . $self->pass . " too large"))
            if length $buf > 1024 * 1024 && $buf !~ /\r?\n\r?\n/;
    }
}

# "HTTP/1.1 200 OK" + headers, or CGI style headers with "Status: 200 OK".
sub _parse_head {
    my $head = shift;
    my @lines = split /\r?\n/, $head;
    my $status;
    if (@lines && $lines[0] =~ m{^HTTP/\d+(?:\.\d+)?\s+(\d{3})(?:\s|$)}) {
        $status = $1;
        shift @lines;
    }
    my (@headers, $has_content_header);
    for my $line (@lines) {
        if ($line =~ /^[ \t]+/ && @headers) {        # obsolete folded continuation
            (my $more = $line) =~ s/^[ \t]+/ /;
            $headers[-1] .= $more;
            next;
        }
        my ($name, $value) = $line =~ /^([^:\s]+)[ \t]*:[ \t]*(.*?)[ \t]*$/ or return;
        $status = $1 if !defined $status && lc $name eq 'status' && $value =~ /^(\d{3})\b/;
        $has_content_header = 1 if lc $name eq 'content-type' || lc $name eq 'location';
        push @headers, $name, $value;
    }
    $status = 200 if !defined $status && $has_content_header;   # CGI default
    return ($status, \@headers);
}

sub _strip_hop_by_hop {
    my @out;
    while (my ($name, $value) = splice @_, 0, 2) {
        push @out, $name, $value unless $HOP_BY_HOP{lc $name};
    }
    return @out;
}

# A closure returning the next piece of the body, or undef at the end (end of stream,
# timeout or error: the response is already under way, so it just ends). A chunked
# body is decoded, since the PSGI server frames the response itself.
sub _body_reader {
    my ($self, $sock, $rest, $headers) = @_;
    my $te = Plack::Util::header_get($headers, 'Transfer-Encoding') // '';
    my $pending = length $rest ? $rest : undef;
    my $raw = sub {
        if (defined $pending) { my $b = $pending; undef $pending; return $b }
        return undef unless $sock;
        my ($chunk) = $self->read_some($sock);
        return $chunk if defined $chunk && length $chunk;
        close $sock;
        undef $sock;
        return undef;
    };
    return $raw unless $te =~ /\bchunked\b/i;
    return _dechunker($raw);
}

sub _dechunker {
    my $raw = shift;
    my ($buf, $size, $done) = ('', undef, 0);
    return sub {
        until ($done) {
            if (!defined $size) {
                if ($buf =~ s/^([0-9a-fA-F]+)[^\n]*\n//) {     # chunk size line
                    $size = hex $1;
                    $done = 1 if $size == 0;
                    next;
                }
            } elsif (length $buf >= $size + 2) {               # chunk data + CRLF
                my $data = substr($buf, 0, $size, '');
                $buf =~ s/^\r?\n//;
                undef $size;
                return $data;
            }
            my $more = $raw->();
            if (defined $more) { $buf .= $more } else { $done = 1 }
        }
        return undef;
    };
}

sub _excerpt {
    my $text = shift;
    $text = substr($text, 0, 200) . '...' if length $text > 200;
    $text =~ s/([^\x20-\x7e])/sprintf('\\x%02x', ord $1)/ge;
    return $text;
}

sub _error {
    my ($code, $message) = @_;
    my %reason = (500 => 'Internal Server Error', 502 => 'Bad Gateway', 504 => 'Gateway Timeout');
    chomp $message;
    my $body = "$code $reason{$code}: $message\n";
    return [$code, ['Content-Type' => 'text/plain; charset=utf-8',
                    'Content-Length' => length $body], [$body]];
}

1;

__END__

=head1 NAME

Plack::App::uWSGI - forward PSGI requests to a uwsgi-protocol backend

=head1 SYNOPSIS

  use Plack::App::uWSGI;
  my $app = Plack::App::uWSGI->new(
      pass  => "localhost:4000",
      param => { UWSGI_FASTROUTER_KEY => "wsgi_cluster" },
  )->to_app;

=head1 DESCRIPTION

See the comment at the top of this file. Part of pymaster's examples (the seed demo's
HTTP frontend); not the CPAN distribution of the same name.

=cut
