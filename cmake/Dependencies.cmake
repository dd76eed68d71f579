# Every dependency comes from a Debian package (see scripts/install-deps).

# BoringSSL from android-libboringssl-dev. Its headers live in /usr/include/android so that they
# never mix with OpenSSL's; the libraries are found by an rpath, never by the default search path.
set(BORINGSSL_ROOT_INCLUDE /usr/include/android CACHE PATH "BoringSSL include root")
set(BORINGSSL_LIB_DIR /usr/lib/x86_64-linux-gnu/android CACHE PATH "BoringSSL library dir")
find_path(BORINGSSL_INCLUDE_DIR openssl/bytestring.h PATHS ${BORINGSSL_ROOT_INCLUDE}
          NO_DEFAULT_PATH REQUIRED)
find_library(BORINGSSL_CRYPTO_LIBRARY NAMES crypto PATHS ${BORINGSSL_LIB_DIR} NO_DEFAULT_PATH
             REQUIRED)
find_library(BORINGSSL_SSL_LIBRARY NAMES ssl PATHS ${BORINGSSL_LIB_DIR} NO_DEFAULT_PATH REQUIRED)
add_library(BoringSSL::crypto SHARED IMPORTED)
set_target_properties(BoringSSL::crypto PROPERTIES
  IMPORTED_LOCATION ${BORINGSSL_CRYPTO_LIBRARY}
  INTERFACE_INCLUDE_DIRECTORIES ${BORINGSSL_INCLUDE_DIR}
  INTERFACE_SYSTEM_INCLUDE_DIRECTORIES ${BORINGSSL_INCLUDE_DIR})
add_library(BoringSSL::ssl SHARED IMPORTED)
set_target_properties(BoringSSL::ssl PROPERTIES
  IMPORTED_LOCATION ${BORINGSSL_SSL_LIBRARY}
  INTERFACE_LINK_LIBRARIES BoringSSL::crypto)
set(CMAKE_BUILD_RPATH ${BORINGSSL_LIB_DIR})
set(CMAKE_INSTALL_RPATH ${BORINGSSL_LIB_DIR})

find_package(tomlplusplus REQUIRED)
find_package(RapidJSON QUIET)
find_path(RAPIDJSON_INCLUDE_DIR rapidjson/document.h REQUIRED)
add_library(RapidJSON::RapidJSON INTERFACE IMPORTED)
set_target_properties(RapidJSON::RapidJSON PROPERTIES
  INTERFACE_SYSTEM_INCLUDE_DIRECTORIES ${RAPIDJSON_INCLUDE_DIR})

find_package(PkgConfig REQUIRED)
pkg_check_modules(LIBEVENT REQUIRED IMPORTED_TARGET libevent_core libevent_extra libevent_pthreads)
pkg_check_modules(CARES REQUIRED IMPORTED_TARGET libcares)
# sd_notify (Type=notify, watchdog) from libsystemd-dev.
pkg_check_modules(SYSTEMD REQUIRED IMPORTED_TARGET libsystemd)
find_package(spdlog REQUIRED)
find_package(Threads REQUIRED)

if(ACR_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()
if(ACR_BUILD_BENCH)
  find_package(benchmark REQUIRED)
endif()
