package Plack::Loader::Pymaster;
# The app loader pymaster's Perl workers run under (`plackup -L Pymaster`).
#
# * Loads the app before the server starts, like Plack's default loader, but turns a load
#   failure into one clear log line and exit code 22 (the worker contract's "app could not
#   load": the master stops instead of respawning in a loop).
# * Gives `.psgi` files a DATA handle for text after `__END__`, as a main script would have
#   (`do FILE`, which Plack uses, opens DATA only for `__DATA__`).
# * With PYMASTER_CHECK=1 it only loads the app and exits (0 = fine): pymaster's preflight.
use strict;
use warnings;
use parent 'Plack::Loader';
use File::Spec ();
use Scalar::Util ();
use overload ();
use Plack::Util ();
use POSIX ();

our $EXIT_FAILED_APP = 22;

sub preload_app {
    my ($self, $builder) = @_;
    install_data_support();
    my $app = eval { $builder->() };
    my $err = $@;
    if (!$err && !_is_app($app)) {
        $err = 'the file did not return a PSGI application (a code reference), got '
             . (defined $app ? "'$app'" : 'undef');
    }
    if ($err) {
        $err =~ s/\s+\z//;
        my $file = $ENV{PYMASTER_PSGI} || 'the PSGI app';
        my $who = $ENV{PYMASTER_WORKER_ID} ? " in worker $ENV{PYMASTER_WORKER_ID} (pid: $$)" : '';
        # fd 2 itself: the app may have put an encoding layer on STDERR (Catalyst does), and
        # syswrite on such a handle dies, which would hide the real error
        my $line = "*** failed loading PSGI app $file$who: $err ***\n";
        utf8::encode($line) if utf8::is_utf8($line);
        POSIX::write(2, $line, length $line);
        exit $EXIT_FAILED_APP;
    }
    if ($ENV{PYMASTER_CHECK}) {
        POSIX::write(1, "pymaster-psgi-check: ok\n", 24);
        exit 0;
    }
    $self->{app} = $app;
}

sub _is_app {
    my $app = shift;
    return 1 if ref $app eq 'CODE';
    return Scalar::Util::blessed($app) && overload::Method($app, '&{}') ? 1 : 0;
}

# -- DATA after __END__ ---------------------------------------------------------------------

my $installed;

sub install_data_support {
    return if $installed++;
    my $orig = \&Plack::Util::load_psgi;
    no warnings 'redefine';
    *Plack::Util::load_psgi = sub {
        my $stuff = shift;
        if ($stuff !~ /^[A-Za-z0-9_:]+$/) {
            my $file = File::Spec->rel2abs($stuff);
            open_end_data($file, sandbox_package($file));
        }
        return $orig->($stuff);
    };
}

# The package Plack::Util::load_psgi runs FILE in (Plack 1.0050 .. 1.0054 name it this way).
sub sandbox_package {
    my $file = shift;
    (my $name = $file) =~ s/([^A-Za-z0-9_])/sprintf("_%2x", ord $1)/eg;
    return "Plack::Sandbox::$name";
}

# Scan FILE for its first __END__ / __DATA__ line. For __END__, open DATA in PKG (where the
# file's top-level code runs) and in the package declared last before the marker, on a real
# file handle positioned after the marker line, with :utf8 when `use utf8` is on (what perl
# does for a main script). __DATA__ files are left alone: perl opens their DATA itself.
# Returns the number of handles opened.
sub open_end_data {
    my ($file, $pkg) = @_;
    open my $src, '<', $file or return 0;
    my ($declared, $utf8, $in_pod) = (undef, 0, 0);
    while (my $line = <$src>) {
        if ($in_pod) { $in_pod = 0 if $line =~ /^=cut\b/; next }
        if ($line =~ /^=[a-zA-Z]/) { $in_pod = 1; next }
        if ($line =~ /^__(END|DATA)__\b/) {
            return 0 if $1 eq 'DATA';
            my $offset = tell $src;
            my $opened = 0;
            for my $p (grep { defined } $pkg, $declared) {
                no strict 'refs';
                next if defined fileno(*{"${p}::DATA"});
                open my $data, '<', $file or next;
                binmode $data, ':utf8' if $utf8;
                seek $data, $offset, 0;
                *{"${p}::DATA"} = *$data{IO};
                $opened++;
            }
            return $opened;
        }
        $declared = $1 if $line =~ /^\s*package\s+([A-Za-z_][\w:]*)\s*[;{]/;
        $utf8 = 1 if $line =~ /^\s*use\s+utf8\b/;
        $utf8 = 0 if $line =~ /^\s*no\s+utf8\b/;
    }
    return 0;
}

1;
