# Installing the encoder library: the header, libscalingnote.so and .a, scalingnote.pc
# (pkg-config) and scalingnoteConfig.cmake (find_package). Nothing else of the tree is installed.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

# What a static link of libscalingnote.a needs besides it (the engine's external libraries).
set(SN_PC_LIBS_PRIVATE "-lcjson -fopenmp -lpthread -lm")
set(SN_CMAKE_LIBS_PRIVATE "${CJSON_LIBRARY};OpenMP::OpenMP_C;Threads::Threads;m")
if(SN_HAVE_CUDA)
  string(APPEND SN_PC_LIBS_PRIVATE " -L${CUDAToolkit_LIBRARY_DIR} -lcudart -lcublasLt -lcublas -lstdc++")
  list(APPEND SN_CMAKE_LIBS_PRIVATE CUDA::cudart CUDA::cublasLt CUDA::cublas stdc++)
endif()
set(SN_PKGCONFIG_DIR ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
set(SN_CMAKECONFIG_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/scalingnote)
file(RELATIVE_PATH SN_PC_PREFIX_FROM_PCDIR /prefix/${SN_PKGCONFIG_DIR} /prefix)
file(RELATIVE_PATH SN_CMAKE_PREFIX_FROM_CONFIGDIR /prefix/${SN_CMAKECONFIG_DIR} /prefix)
set(SN_SHARED_FILE libscalingnote.so.${PROJECT_VERSION})
set(SN_SHARED_SONAME libscalingnote.so.${PROJECT_VERSION_MAJOR})
if(SN_HAVE_CUDA)
  # The static target's CUDA dependencies are found by the consumer's find_package(CUDAToolkit).
  set(SN_CONFIG_CUDA "find_dependency(CUDAToolkit)")
endif()
configure_file(${PROJECT_SOURCE_DIR}/cmake/scalingnote.pc.in ${PROJECT_BINARY_DIR}/scalingnote.pc @ONLY)
configure_file(${PROJECT_SOURCE_DIR}/cmake/scalingnoteConfig.cmake.in ${PROJECT_BINARY_DIR}/scalingnoteConfig.cmake @ONLY)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/scalingnoteConfigVersion.cmake
                                 VERSION ${PROJECT_VERSION} COMPATIBILITY SameMajorVersion)

install(FILES ${PROJECT_SOURCE_DIR}/include/scalingnote/encoder.h
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/scalingnote)
install(TARGETS scalingnote_encoder_shared LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(FILES ${PROJECT_BINARY_DIR}/libscalingnote.a DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(FILES ${PROJECT_BINARY_DIR}/scalingnote.pc DESTINATION ${SN_PKGCONFIG_DIR})
install(FILES ${PROJECT_BINARY_DIR}/scalingnoteConfig.cmake ${PROJECT_BINARY_DIR}/scalingnoteConfigVersion.cmake
        DESTINATION ${SN_CMAKECONFIG_DIR})
