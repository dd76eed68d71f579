# Installation layout and the Debian package (`cpack -G DEB` in the build folder).
# The package has one layout whatever CMAKE_INSTALL_PREFIX is (the units name these paths):
#   /usr/bin/acr-egress, /usr/lib/systemd/system/*, /usr/lib/{sysusers,tmpfiles}.d/acr-egress.conf,
#   /usr/libexec/acr-egress/acr-egress-servicetags-refresh, /usr/share/doc/acr-egress/,
#   /etc/acr-egress/*, /etc/default/acr-egress-servicetags.
# Destinations are relative to the prefix, and CPack packs with the prefix /usr
# (CPACK_PACKAGING_INSTALL_PREFIX); the configuration goes to /etc, an absolute destination,
# because Debian keeps conffiles there and not under the prefix. `cmake --install` with another
# prefix (e.g. /usr/local) puts the same relative tree under that prefix.
set(ACR_PACKAGE_PREFIX /usr)
set(ACR_SYSCONF_DIR /etc)
set(ACR_SYSTEMD_UNIT_DIR lib/systemd/system)
set(ACR_LIBEXEC_DIR libexec/acr-egress)
set(ACR_DOC_DIR share/doc/acr-egress)

# The binary itself is installed by proxy/CMakeLists.txt (bin/acr-egress).
install(FILES systemd/acr-egress.service systemd/acr-egress-servicetags.service
              systemd/acr-egress-servicetags.timer systemd/acr-egress.socket
        DESTINATION ${ACR_SYSTEMD_UNIT_DIR})
install(FILES systemd/acr-egress.sysusers DESTINATION lib/sysusers.d RENAME acr-egress.conf)
install(FILES systemd/acr-egress.tmpfiles DESTINATION lib/tmpfiles.d RENAME acr-egress.conf)
install(PROGRAMS scripts/acr-egress-servicetags-refresh DESTINATION ${ACR_LIBEXEC_DIR})
# Operator-edited files: conffiles of the package (packaging/deb/conffiles.in).
install(FILES conf/examples/acr-egress.toml systemd/acr-egress.nft
        DESTINATION ${ACR_SYSCONF_DIR}/acr-egress)
install(FILES systemd/acr-egress-servicetags.default DESTINATION ${ACR_SYSCONF_DIR}/default
        RENAME acr-egress-servicetags)
install(FILES README.md DESTINATION ${ACR_DOC_DIR})
# The reference (README.md links into it): docs/*.md, the generated tables included.
install(DIRECTORY docs/ DESTINATION ${ACR_DOC_DIR}/docs FILES_MATCHING PATTERN "*.md")
install(DIRECTORY conf/examples/ DESTINATION ${ACR_DOC_DIR}/examples
        FILES_MATCHING PATTERN "*.toml")
# The drop-in that grants CAP_NET_ADMIN for transparent mode (--mark, TPROXY).
install(FILES systemd/acr-egress-transparent.conf DESTINATION ${ACR_DOC_DIR}/examples/systemd
        RENAME transparent.conf)

set(CPACK_PACKAGE_NAME acr-egress)
set(CPACK_PACKAGE_VENDOR "acr-egress")
set(CPACK_PACKAGE_CONTACT "acr-egress maintainers <acr-egress@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "egress proxy that lets container engines reach Azure Container Registry only")
set(CPACK_PACKAGE_DESCRIPTION "acr-egress is an HTTP CONNECT, transparent and SNI proxy that allows
the registry, data and blob endpoints of Azure Container Registry and the address ranges of
Azure service tags, and denies everything else with a reason naming the rule.")
set(CPACK_PACKAGING_INSTALL_PREFIX "${ACR_PACKAGE_PREFIX}")
set(CPACK_GENERATOR DEB)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
# Library dependencies come from dpkg-shlibdeps, which follows the binary's RUNPATH into
# /usr/lib/x86_64-linux-gnu/android and maps BoringSSL to android-libboringssl through that
# package's shlibs file. systemd provides systemd-sysusers and systemd-tmpfiles for postinst.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "systemd")
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "curl, ca-certificates")
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "nftables")
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION TRUE)
configure_file(${PROJECT_SOURCE_DIR}/packaging/deb/conffiles.in
               ${PROJECT_BINARY_DIR}/packaging/deb/conffiles @ONLY)
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    "${PROJECT_BINARY_DIR}/packaging/deb/conffiles;${PROJECT_SOURCE_DIR}/packaging/deb/postinst;${PROJECT_SOURCE_DIR}/packaging/deb/prerm;${PROJECT_SOURCE_DIR}/packaging/deb/postrm")
include(CPack)
